"""Name the GraphQL pilot image the pipeline builds from ``components/graphql/``.

    python -m tools.graphql_image                          # ghcr.io/pgplatform/graphql-pilot:<tag>
    python -m tools.graphql_image --repository REGISTRY/PATH
    python -m tools.graphql_image --tag                    # the tag alone

The tag is derived from the Dockerfile and the two npm files, so the image pushed by the
workflows and the reference the stack runs (``pgplatform:graphql.image``) cannot drift apart.
"""

from __future__ import annotations

import sys

from components.render.graphql_image import DEFAULT_REPOSITORY, default_reference, image_tag
from tools import image_cli


def main(argv: list[str] | None = None) -> int:
    return image_cli.run(
        "graphql_image",
        __doc__ or "",
        default_repository=DEFAULT_REPOSITORY,
        reference=default_reference,
        tag=image_tag,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
