"""Name the advisor image the pipeline builds from ``tools/advisor/Dockerfile``.

    python -m tools.advisor_image                  # ghcr.io/pgplatform/postgres-advisor:<tag>
    python -m tools.advisor_image --repository REGISTRY/PATH
    python -m tools.advisor_image --tag            # the tag alone

The tag is derived from the Dockerfile and the files it copies, so the image pushed by the
workflows and the reference the stack runs (``pgplatform:advisor.image``) cannot drift apart.
The build context is ``tools/``: ``docker build -f tools/advisor/Dockerfile tools``.
"""

from __future__ import annotations

import argparse
import sys

from components.render.advisor_job import DEFAULT_REPOSITORY, default_reference, image_tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=DEFAULT_REPOSITORY)
    parser.add_argument("--tag", action="store_true", help="print the tag only")
    args = parser.parse_args(argv)
    try:
        print(image_tag() if args.tag else default_reference(args.repository))
    except ValueError as error:
        print(f"advisor_image: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
