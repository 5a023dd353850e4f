"""The command line shared by the tools that name an image the pipelines build."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run(
    program: str,
    description: str,
    *,
    default_repository: str,
    reference: Callable[[str], str],
    tag: Callable[[], str],
    argv: list[str] | None = None,
) -> int:
    """Print the image reference (or ``--tag`` alone); a bad tree exits 2 with the reason."""
    parser = argparse.ArgumentParser(description=description.partition("\n\n")[0])
    parser.add_argument("--repository", default=default_repository)
    parser.add_argument("--tag", action="store_true", help="print the tag only")
    args = parser.parse_args(argv)
    try:
        print(tag() if args.tag else reference(args.repository))
    except ValueError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return 2
    return 0
