"""SQL lint: squawk's migration-safety rules and sqlfluff's format check (``make sql-lint``).

squawk (PyPI ``squawk-cli``, configured by ``.squawk.toml``) reads every SQL file we ship or
render: ``db/``, ``migrations/**`` and the rendered bundles under
``build/<stack>/sql/``. It refuses what hurts a live database: no ``lock_timeout`` or
``statement_timeout`` before a statement that locks, ``CREATE INDEX`` without ``CONCURRENTLY``,
a constraint added without ``NOT VALID``, a new ``NOT NULL`` column without a default.

The rendered bundles run only inside ``apply.psql``'s one transaction, which sets both timeouts
(``BASELINE_LOCK_TIMEOUT``, ``BASELINE_STATEMENT_TIMEOUT``), or are the SQL view of the access
plan that the Pulumi provider applies: the two timeout rules are off for them alone. The
hand-written files say the same inline (``-- squawk-ignore-file``), where a reader sees it.

sqlfluff (``.sqlfluff``, postgres dialect) checks the layout of the hand-written files only: the
rendered ones are generated text, whose builders are tested on their output. ``--fix`` rewrites
the hand-written files in that layout. Exit status: non-zero when either tool finds a problem.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from components.render.migrations import runs_in_transaction

ROOT: Final = Path(__file__).resolve().parents[1]
# Hand-written SQL: both tools. migrations/ holds one directory per domain.
SOURCE_GLOBS: Final = ("db/*.sql", "migrations/**/*.sql")
# What the offline render writes (make render-all): squawk only.
RENDERED_GLOB: Final = "build/*/sql/*.sql"
RENDERED_EXCLUDED_RULES: Final = ("require-lock-timeout", "require-statement-timeout")


def _tool(name: str) -> str:
    """The console script installed next to this interpreter (the venv's ``bin``)."""
    candidate = Path(sys.executable).parent / name
    if not candidate.is_file():
        raise FileNotFoundError(f"{name} not found next to {sys.executable}: make setup")
    return str(candidate)


def source_files(root: Path = ROOT) -> list[Path]:
    """Hand-written SQL files, sorted."""
    return sorted({path for pattern in SOURCE_GLOBS for path in root.glob(pattern)})


def rendered_files(root: Path = ROOT) -> list[Path]:
    """SQL the offline render wrote for each stack, sorted (none before ``make render-all``)."""
    return sorted(root.glob(RENDERED_GLOB))


def squawk_command(
    files: Sequence[Path], *, exclude: Sequence[str] = (), in_transaction: bool = False
) -> list[str]:
    """squawk over ``files`` with the repository's configuration, one line per finding.

    ``in_transaction``: the files run inside a transaction the runner opens (squawk's
    ``--assume-in-transaction``), as every migration does unless it opts out.
    """
    command = [_tool("squawk"), "--config", str(ROOT / ".squawk.toml"), "--reporter", "gcc"]
    if in_transaction:
        command.append("--assume-in-transaction")
    if exclude:
        command.append("--exclude=" + ",".join(exclude))
    return [*command, *(str(path) for path in files)]


def sqlfluff_command(files: Sequence[Path], *, fix: bool = False) -> list[str]:
    """sqlfluff's format check (or fix) of ``files`` with the repository's configuration."""
    action = ["fix"] if fix else ["lint"]
    return [
        _tool("sqlfluff"),
        *action,
        "--config",
        str(ROOT / ".sqlfluff"),
        "--disable-progress-bar",
        "--nocolor",
        *(str(path) for path in files),
    ]


def lint(root: Path = ROOT, *, fix: bool = False, rendered: Sequence[Path] | None = None) -> int:
    """Run both tools over the files under ``root``; 0 when everything passes.

    ``rendered``: the rendered SQL to lint, by default what ``make render-all`` wrote.
    """
    sources = source_files(root)
    rendered = rendered_files(root) if rendered is None else list(rendered)
    if not sources:
        print(f"sql-lint: no SQL file under {root}", file=sys.stderr)
        return 1
    failed = False
    if fix:
        subprocess.run(sqlfluff_command(sources, fix=True), check=False)
    # The migrations runner wraps each migration in a transaction of its own, unless the file
    # says ``-- pgplatform: no-transaction`` (components/render/migrations.py).
    wrapped = [
        path
        for path in sources
        if "migrations" in path.relative_to(root).parts[:1]
        and runs_in_transaction(path.read_text(encoding="utf-8"))
    ]
    plain = [path for path in sources if path not in wrapped]
    steps = [
        *([("squawk", squawk_command(plain))] if plain else []),
        *(
            [("squawk (migrations)", squawk_command(wrapped, in_transaction=True))]
            if wrapped
            else []
        ),
        ("sqlfluff", sqlfluff_command(sources)),
    ]
    if rendered:
        rendered_step = squawk_command(rendered, exclude=RENDERED_EXCLUDED_RULES)
        steps.insert(1, ("squawk (rendered)", rendered_step))
    for label, command in steps:
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            print(f"sql-lint: {label} failed (docs/sql-lint.md)", file=sys.stderr)
            failed = True
    count = len(sources) + len(rendered)
    print(f"sql-lint: {count} files ({len(sources)} hand-written, {len(rendered)} rendered)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.sql_lint [--fix] [--root DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fix", action="store_true", help="rewrite hand-written SQL first")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root to lint")
    args = parser.parse_args(argv)
    return lint(args.root, fix=args.fix)


if __name__ == "__main__":
    sys.exit(main())
