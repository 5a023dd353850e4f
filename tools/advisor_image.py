"""Name the advisor image the pipeline builds from ``tools/advisor/Dockerfile``.

    python -m tools.advisor_image                  # ghcr.io/pgplatform/postgres-advisor:<tag>
    python -m tools.advisor_image --repository REGISTRY/PATH
    python -m tools.advisor_image --tag            # the tag alone

The tag is derived from the Dockerfile and the files it copies, so the image pushed by the
workflows and the reference the stack runs (``pgplatform:advisor.image``) cannot drift apart.
The build context is ``tools/``: ``docker build -f tools/advisor/Dockerfile tools``.
"""

from __future__ import annotations

import sys

from components.render.advisor_job import DEFAULT_REPOSITORY, default_reference, image_tag
from tools import image_cli


def main(argv: list[str] | None = None) -> int:
    return image_cli.run(
        "advisor_image",
        __doc__ or "",
        default_repository=DEFAULT_REPOSITORY,
        reference=default_reference,
        tag=image_tag,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
