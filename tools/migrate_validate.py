"""``make migrate-validate``: every stack's migrations on a throw-away PostgreSQL 15.

Per rendered stack (``build/<stack>/``; one server each, roles being cluster-wide): an empty
database gets the platform bundle, then the migrations Job's script; a second run must apply
nothing and leave the catalog as it was; every table of an exposed schema must have row-level
security forced and at least one policy, and every policy must name its roles. A stack that
serves the CDC copies gets its CDC database built next to it (``tools.migrate_db``) and its
migrations run there twice too. A directory under ``migrations/`` that no stack applies is
reported too. Exit status 1 lists every problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.render.catalog import CATALOG_SQL, LEDGER_SQL, VALIDATE_SQL, diff
from components.render.migrations import MIGRATIONS_DIR, available_domains
from tests.integration.pg import PgCluster, running_cluster
from tools.migrate_db import (
    COPIES_MIGRATIONS_GLOB,
    MIGRATIONS_CONFIGMAP_GLOB,
    build_copy_database,
    copy_database,
    platform_bundle,
    rendered_config_map,
    rendered_migrations,
    run_migrations,
    stack_database,
)

ROOT = Path(__file__).resolve().parents[1]
STACKS = ("staging", "prod")


def snapshot(conn: Any) -> list[tuple[str, str, str]]:
    """Catalog and ledger rows of a connected database."""
    rows = conn.execute(CATALOG_SQL).fetchall() + conn.execute(LEDGER_SQL).fetchall()
    return [(str(k), str(o), str(d)) for k, o, d in rows]


def validate_build(cluster: PgCluster, build: Path) -> list[str]:
    """Problems of one rendered stack, each naming what to fix; empty when all is well."""
    dbname = stack_database(build)
    cluster.create_database(dbname)
    cluster.apply_sql(dbname, platform_bundle(build))
    bundle = rendered_migrations(build)
    first = run_migrations(cluster, dbname, bundle)
    if first.returncode != 0:
        return [f"the migrations do not apply:\n{first.stderr.strip()}"]
    return second_run(cluster, dbname, bundle, checks=VALIDATE_SQL) + validate_copies(
        cluster, build
    )


def second_run(
    cluster: PgCluster, dbname: str, bundle: Path, *, checks: str | None = None, label: str = ""
) -> list[str]:
    """The migrations run again: nothing to apply, the catalog unchanged; ``checks`` lists
    further problems of the database afterwards. ``label`` prefixes each problem."""
    with cluster.connect(dbname) as conn:
        before = snapshot(conn)
    second = run_migrations(cluster, dbname, bundle)
    problems = []
    if second.returncode != 0 or "applying" in second.stdout:
        problems.append(f"{label}a second run is not a no-op:\n{second.stdout}{second.stderr}")
    with cluster.connect(dbname) as conn:
        after = snapshot(conn)
        if checks is not None:
            problems += [str(row[0]) for row in conn.execute(checks).fetchall()]
    return problems + [f"{label}changed by the second run: {d}" for d in diff(before, after)]


def validate_copies(cluster: PgCluster, build: Path) -> list[str]:
    """The CDC database's migrations: they apply after the copy setup, and again as a no-op.
    (Row-level security there is the copy setup's seal, proven by its own tests.)"""
    if copy_database(build) is None:
        return []
    try:
        dbname = build_copy_database(cluster, build)
    except RuntimeError as error:
        return [f"the CDC database's setup or migrations do not apply: {error}"]
    bundle = rendered_config_map(build, COPIES_MIGRATIONS_GLOB)
    return second_run(cluster, dbname, bundle, label=f"{dbname}: ")


def migration_files(build: Path) -> list[Path]:
    """Every migration the stack's Jobs apply, in either database."""
    globs = [MIGRATIONS_CONFIGMAP_GLOB] + ([COPIES_MIGRATIONS_GLOB] if copy_database(build) else [])
    return [p for glob in globs for p in rendered_config_map(build, glob).glob("*.sql")]


def unused_domains(builds: Sequence[Path]) -> list[str]:
    """Migration directories no rendered stack applies (a typo, or a domain removed)."""
    applied: set[str] = set()
    for build in builds:
        applied |= {p.name.split(".", 1)[0] for p in migration_files(build)}
    return [
        f"migrations/{d}/: no stack configures domain {d!r}"
        for d in available_domains(MIGRATIONS_DIR)
        if d not in applied
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", action="append", help="stack(s) to check (default: all)")
    parser.add_argument("--build-root", type=Path, default=ROOT / "build")
    args = parser.parse_args(argv)
    stacks = args.stack or list(STACKS)
    builds = [args.build_root / stack for stack in stacks]
    failed = False
    for stack, build in zip(stacks, builds, strict=True):
        with running_cluster() as cluster:
            problems = validate_build(cluster, build)
        count = len(migration_files(build))
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"migrate-validate {stack}: {count} migration(s), applied twice: {status}")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
    for problem in unused_domains(builds) if set(stacks) == set(STACKS) else []:
        print(f"migrate-validate: {problem}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
