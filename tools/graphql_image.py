"""Name the GraphQL pilot image the pipeline builds from ``components/graphql/``.

    python -m tools.graphql_image                          # ghcr.io/pgplatform/graphql-pilot:<tag>
    python -m tools.graphql_image --repository REGISTRY/PATH
    python -m tools.graphql_image --tag                    # the tag alone

The tag is derived from the Dockerfile and the two npm files, so the image pushed by the
workflows and the reference the stack runs (``pgplatform:graphql.image``) cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys

from components.render.graphql_image import DEFAULT_REPOSITORY, default_reference, image_tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=DEFAULT_REPOSITORY)
    parser.add_argument("--tag", action="store_true", help="print the tag only")
    args = parser.parse_args(argv)
    try:
        print(image_tag() if args.tag else default_reference(args.repository))
    except ValueError as error:
        print(f"graphql_image: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
