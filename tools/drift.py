"""Drift: a live database's catalog against what the platform bundle and the migrations build.

``python -m tools.drift --stack prod --dsn 'host=... dbname=app user=... sslmode=verify-full'``
renders the stack (or reads ``--build``), builds the expected database on a throw-away
PostgreSQL 15 (``tools.migrate_db``: rendered bundle, then the migrations Job's script), reads
the same catalog rows from both (``components/render/catalog.py``: schemas, relations, columns,
policies, grants, functions, the migration ledger) and prints every difference:
``+`` only live (made by hand), ``-`` missing live (dropped, or a migration not applied yet),
``~`` changed. Exit status 0 without drift, 1 with drift, 2 when it could not compare.
Connect as the admin role: the ledger is readable by the database owner only (without it the
ledger rows are left out of the comparison on both sides).

``--copies`` compares the CDC database instead (``domains.<d>.database``: the copies, the copy
setup and the migrations of the domains served there), built the same way next to the stack's
database, whose roles it uses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from components.render.catalog import CATALOG_SQL, LEDGER_SQL, Difference, diff
from tests.integration.pg import running_cluster
from tools.migrate_db import build_copy_database, build_stack_database, stack_database
from tools.render import render_in_subprocess

Row = tuple[str, str, str]


def catalog(conn: Any, *, ledger: bool) -> list[Row]:
    """The catalog rows of a connected database (and its ledger when asked)."""
    rows = conn.execute(CATALOG_SQL).fetchall()
    if ledger:
        rows += conn.execute(LEDGER_SQL).fetchall()
    return [(str(k), str(o), str(d)) for k, o, d in rows]


def can_read_ledger(conn: Any) -> bool:
    row = conn.execute(
        "SELECT pg_catalog.to_regclass('platform.migration') IS NOT NULL"
        " AND pg_catalog.has_table_privilege('platform.migration', 'SELECT')"
    ).fetchone()
    return bool(row and row[0])


def expected_catalog(build: Path, *, ledger: bool, copies: bool = False) -> list[Row]:
    """Catalog rows of an empty database after the rendered bundle and the migrations (with
    ``copies``: of the CDC database built after it)."""
    with running_cluster() as cluster:
        dbname = stack_database(build)
        build_stack_database(cluster, dbname, build)
        if copies:
            dbname = build_copy_database(cluster, build)
        with cluster.connect(dbname) as conn:
            return catalog(conn, ledger=ledger)


def drift(build: Path, dsn: str, *, copies: bool = False) -> list[Difference]:
    """Differences between the live database at ``dsn`` and the render in ``build``."""
    with psycopg.connect(dsn, autocommit=True) as live:
        ledger = can_read_ledger(live)
        have = catalog(live, ledger=ledger)
    return diff(expected_catalog(build, ledger=ledger, copies=copies), have)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--dsn", required=True, help="libpq connection string of the database")
    parser.add_argument("--build", type=Path, help="an offline render of the stack to use")
    parser.add_argument(
        "--copies", action="store_true", help="the DSN is the CDC database serving the copies"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pgplatform-drift-") as tmp:
        build = args.build
        if build is None:
            build = Path(tmp) / args.stack
            rendered = render_in_subprocess(args.stack, build)
            if rendered.returncode != 0:
                print(rendered.stderr, file=sys.stderr)
                return 2
        try:
            found = drift(build, args.dsn, copies=args.copies)
        except (psycopg.Error, RuntimeError, OSError, ValueError) as error:
            print(f"drift: could not compare: {error}", file=sys.stderr)
            return 2
    for difference in found:
        print(difference)
    print(f"drift {args.stack}: {len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
