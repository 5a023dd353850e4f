"""A stack's database as its render builds it: platform bundle, then the migrations Job's script.

Shared by ``make migrate-validate``, ``python -m tools.drift`` and the integration tests, so
the database they reason about is built one way: ``build/<stack>/sql/*.sql`` as superuser (what
the offline render says the platform is), then ``migrate.psql`` of the rendered migrations
ConfigMap run by ``psql -X -f``, exactly as the Job's container runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from components.render.migrations import SCRIPT
from tests.integration.pg import PG_PACKAGE, PgCluster
from tests.tooling import require_tool

MIGRATIONS_CONFIGMAP_GLOB: Final = "sql-baseline-migrations-sql-*"


def rendered_migrations(build: Path) -> Path:
    """The directory of the rendered migrations ConfigMap (its files as the Job mounts them)."""
    found = sorted((build / "files").glob(MIGRATIONS_CONFIGMAP_GLOB))
    if len(found) != 1:
        raise FileNotFoundError(f"{build}: expected one migrations ConfigMap, found {found}")
    return found[0]


def platform_bundle(build: Path) -> list[tuple[str, str]]:
    """``(name, text)`` of the rendered SQL bundle (access plan and baseline), in order."""
    return [(p.name, p.read_text()) for p in sorted((build / "sql").glob("*.sql"))]


def run_migrations(
    cluster: PgCluster,
    dbname: str,
    bundle_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``psql -X -f migrate.psql`` as the Job runs it; superuser over the socket by default."""
    psql = require_tool("psql", PG_PACKAGE)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cluster.base),
        "PGHOST": str(cluster.socket_dir),
        "PGPORT": str(cluster.port),
        "PGUSER": cluster.superuser,
        "PGPASSWORD": cluster.superuser_password,
        "PGDATABASE": dbname,
        "PGAPPNAME": "pgplatform-migrations",
        **(env or {}),
    }
    return subprocess.run(
        [psql, "-X", "-f", str(bundle_dir / SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def apply_migrations(cluster: PgCluster, dbname: str, bundle_dir: Path) -> str:
    """Run the migrations and fail with psql's output when they do not apply; returns it."""
    result = run_migrations(cluster, dbname, bundle_dir)
    if result.returncode != 0:
        raise RuntimeError(
            f"migrations failed in database {dbname!r} (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def build_stack_database(cluster: PgCluster, dbname: str, build: Path) -> str:
    """A new database ``dbname`` holding the rendered platform and every migration."""
    cluster.create_database(dbname)
    cluster.apply_sql(dbname, platform_bundle(build))
    return apply_migrations(cluster, dbname, rendered_migrations(build))


def stack_database(build: Path) -> str:
    """The stack's database name, as its rendered access plan grants it."""
    access = (build / "sql" / "010_access.sql").read_text()
    match = re.search(r'GRANT CONNECT ON DATABASE "([^"]+)"', access)
    if match is None:
        raise ValueError(f"{build}/sql/010_access.sql grants CONNECT on no database")
    return match.group(1)
