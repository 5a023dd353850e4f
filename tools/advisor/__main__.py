"""Read a live database and report what slows its policies or weakens its security.

    python -m tools.advisor --dsn "host=... dbname=app user=..." [--schema identity ...]
        [--json report.json] [--fail-on warning]

Prints one line per finding and a totals line (the summary a Job's log keeps), writes the full
report as JSON where ``--json`` says (``-`` for stdout), and exits 1 when a finding at or above
``--fail-on`` was reported (default: never), 2 on a usage or connection error. Nothing it does
is kept: every step runs in one transaction that is rolled back.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import psycopg

from tools.advisor.checks import Advisor
from tools.advisor.report import SEVERITIES, Report

DEFAULT_AUTHENTICATOR = "postgrest"


def exposed_schemas(conn: psycopg.Connection[Any], api_roles: list[str]) -> list[str]:
    """The platform's registry ``platform.exposed_schema`` (written from the stack's domains),
    with the private schemas masked tables of those schemas moved to (docs/masking.md: their
    policies still decide what the API serves); in a database without it, the schemas granted
    (not merely through PUBLIC) to an API role, less ``platform`` and ``audit``, which API roles
    use but PostgREST does not expose.
    """
    registry = conn.execute(
        "SELECT pg_catalog.to_regclass('platform.exposed_schema') IS NOT NULL"
    ).fetchone()
    if registry and registry[0]:
        names = conn.execute(
            "SELECT e.name::text FROM platform.exposed_schema e "
            "UNION SELECT n.nspname::text FROM platform.exposed_schema e "
            "JOIN pg_catalog.pg_namespace n ON n.nspname = e.name || '_private' ORDER BY 1"
        )
        return [str(r[0]) for r in names.fetchall()]
    rows = conn.execute(
        "SELECT n.nspname::text FROM pg_catalog.pg_namespace n "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'platform', 'audit') "
        "AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a "
        "  JOIN pg_catalog.pg_roles r ON r.rolname = ANY(%s::text[]) "
        "  WHERE a.privilege_type = 'USAGE' AND a.grantee <> 0 "
        "    AND pg_catalog.pg_has_role(r.oid, a.grantee, 'MEMBER')) "
        "ORDER BY 1",
        (api_roles,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def advise(dsn: str, schemas: list[str] | None, authenticator: str, top: int) -> Report:
    """Run every check on the database ``dsn`` names; roll everything back."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET application_name = 'pgplatform-advisor'")
        try:
            advisor = Advisor(conn, schemas or [], authenticator, top)
            if not schemas:
                advisor.schemas[:] = exposed_schemas(conn, advisor.api_roles)
                advisor.report.schemas = advisor.schemas
            return advisor.run()
        finally:
            conn.rollback()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.advisor", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("ADVISOR_DSN", ""),
        help="libpq connection string or URI (default: $ADVISOR_DSN; PG* variables apply)",
    )
    parser.add_argument(
        "--schema",
        action="append",
        dest="schemas",
        help="an exposed schema (repeat); default: platform.exposed_schema, else every "
        "schema granted to an API role, less platform and audit",
    )
    parser.add_argument(
        "--authenticator",
        default=DEFAULT_AUTHENTICATOR,
        help="the login PostgREST uses; the roles it may switch to are the API roles",
    )
    parser.add_argument("--top", type=int, default=10, help="heaviest statements to advise on")
    parser.add_argument("--json", dest="json_path", help="write the JSON report here (- = stdout)")
    parser.add_argument(
        "--fail-on", choices=SEVERITIES, help="exit 1 when a finding of this severity or worse"
    )
    args = parser.parse_args(argv)
    try:
        report = advise(args.dsn, args.schemas, args.authenticator, args.top)
    except psycopg.OperationalError as error:
        print(f"advisor: cannot connect: {str(error).strip()}", file=sys.stderr)
        return 2
    log = sys.stderr if args.json_path == "-" else sys.stdout
    for line in report.summary():
        print(line, file=log)
    if args.json_path == "-":
        print(report.dumps())
    elif args.json_path:
        Path(args.json_path).write_text(report.dumps() + "\n")
    if args.fail_on:
        worst = SEVERITIES.index(args.fail_on)
        if any(SEVERITIES.index(f.severity) <= worst for f in report.findings):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
