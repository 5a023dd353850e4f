"""A stack's database as its render builds it: platform bundle, then the migrations Job's script.

Shared by ``make migrate-validate``, ``python -m tools.drift`` and the integration tests, so
the database they reason about is built one way: ``build/<stack>/sql/*.sql`` as superuser (what
the offline render says the platform is), then ``migrate.psql`` of the rendered migrations
ConfigMap run by ``psql -X -f``, exactly as the Job's container runs it.

The CDC database, where a stack serves the change-data-capture copies, is built the same way
from its own ConfigMaps: the copies' tables (the CDC Job's ``subscriber.sql``), the copy
setup's ``apply.psql``, then its migrations Job's ``migrate.psql``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from components.render.baseline import APPLY_SCRIPT
from components.render.migrations import SCRIPT
from tests.integration.pg import PG_PACKAGE, PgCluster
from tests.tooling import require_tool

MIGRATIONS_CONFIGMAP_GLOB: Final = "sql-baseline-migrations-sql-*"
COPIES_CONFIGMAP_GLOB: Final = "sql-baseline-copies-sql-*"
COPIES_MIGRATIONS_GLOB: Final = "sql-baseline-copies-migrations-sql-*"
CDC_CONFIGMAP_GLOB: Final = "cdc-sql-*"
_CONNECT = re.compile(r'GRANT CONNECT ON DATABASE "([^"]+)"')


def rendered_migrations(build: Path) -> Path:
    """The directory of the rendered migrations ConfigMap (its files as the Job mounts them)."""
    return rendered_config_map(build, MIGRATIONS_CONFIGMAP_GLOB)


def rendered_config_map(build: Path, glob: str) -> Path:
    """The directory of the one rendered ConfigMap matching ``glob``, as a Job mounts it."""
    found = sorted((build / "files").glob(glob))
    if len(found) != 1:
        raise FileNotFoundError(f"{build}: expected one ConfigMap {glob}, found {found}")
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
    return run_script(cluster, dbname, bundle_dir / SCRIPT, env=env, timeout=timeout)


def run_script(
    cluster: PgCluster,
    dbname: str,
    script: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    stop_on_error: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``psql -X -f script`` as a Job runs it (``stop_on_error``: with ``-v ON_ERROR_STOP=1``,
    for a file that does not set it itself); superuser over the socket by default."""
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
        [psql, "-X", *(["-v", "ON_ERROR_STOP=1"] if stop_on_error else []), "-f", str(script)],
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
    return _granted_database(build / "sql" / "010_access.sql")


def copy_database(build: Path) -> str | None:
    """The CDC database's name, as its setup grants it; None: no domain serves the copies."""
    found = sorted((build / "files").glob(COPIES_CONFIGMAP_GLOB))
    return _granted_database(found[0] / "010_access.sql") if found else None


def _granted_database(access_file: Path) -> str:
    match = _CONNECT.search(access_file.read_text())
    if match is None:
        raise ValueError(f"{access_file} grants CONNECT on no database")
    return match.group(1)


def build_copy_database(cluster: PgCluster, build: Path) -> str:
    """The CDC database as the render builds it, in a cluster that holds the stack's database
    (its roles): the copies' tables, the copy setup, the migrations of the domains served there.
    """
    name = copy_database(build)
    if name is None:
        raise FileNotFoundError(f"{build}: no domain serves the CDC copies")
    cluster.create_database(name)
    subscriber = rendered_config_map(build, CDC_CONFIGMAP_GLOB) / "subscriber.sql"
    setup = rendered_config_map(build, COPIES_CONFIGMAP_GLOB) / APPLY_SCRIPT
    # As the CDC Job runs subscriber.sql; apply.psql stops on an error by itself.
    for script, stop in ((subscriber, True), (setup, False)):
        done = run_script(cluster, name, script, stop_on_error=stop)
        if done.returncode != 0:
            raise RuntimeError(f"{script.name} failed in {name!r}:\n{done.stdout}{done.stderr}")
    apply_migrations(cluster, name, rendered_config_map(build, COPIES_MIGRATIONS_GLOB))
    return name
