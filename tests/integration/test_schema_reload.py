"""New tables reach the API: the schema version and the reloader sidecar, on real software.

PostgREST holds no LISTEN connection through PgBouncer (transaction pooling), so ``NOTIFY
pgrst`` never reaches it. Proven here on the staging stack's database tier from its offline
render (TLS-only PostgreSQL 15 with the rendered SQL, PgBouncer with the rendered ini):

* ``platform.schema_version`` changes with DDL on the schema and with nothing else, and the
  authenticator reads it through the pool;
* the sidecar script of the rendered Deployment, run with the container's environment, sends
  SIGUSR1 to a process named ``postgrest`` after a schema change, once per change.

The time a change takes to reach the API is measured by ``bench/schema_reload.py``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from components.render.migrations import (
    MIGRATIONS_DIR,
    job_bundle,
    plan_migrations,
    write_bundle,
)
from components.render.postgrest import SCHEMA_POLL_ENV
from tests.integration.pooler import RunningStack, running_stack
from tests.integration.schema_reload import running_reloader
from tools.migrate_db import run_migrations

pytestmark = pytest.mark.integration

POLL = 1
"""Poll interval for these tests (the rendered default is longer; see the benchmark)."""


@pytest.fixture(scope="module")
def build(rendered_stack: Callable[[str], Path]) -> Path:
    return rendered_stack("staging")


@pytest.fixture(scope="module")
def stack(build: Path) -> Iterator[RunningStack]:
    with running_stack("staging", build) as env:
        yield env


def version(stack: RunningStack, *schemas: str) -> str:
    """``platform.schema_version`` read as PostgREST's authenticator through PgBouncer."""
    with stack.connect() as conn:
        placeholders = ", ".join(["%s"] * len(schemas))
        row = conn.execute(
            f"SELECT platform.schema_version({placeholders})",
            schemas,
        ).fetchone()
    assert row is not None
    assert row[0], "schema_version returned nothing"
    return str(row[0])


def admin(stack: RunningStack) -> psycopg.Connection[Any]:
    return stack.cluster.connect(stack.database)


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE identity.sv_new (id bigint PRIMARY KEY)",
        "ALTER TABLE identity.sv_base ADD COLUMN extra text",
        "ALTER TABLE identity.sv_base ALTER COLUMN note TYPE varchar(200)",
        "ALTER TABLE identity.sv_base RENAME COLUMN note TO remark",
        "CREATE VIEW identity.sv_view WITH (security_invoker) AS SELECT id FROM identity.sv_base",
        "CREATE FUNCTION identity.sv_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "COMMENT ON TABLE identity.sv_base IS 'described'",
        "COMMENT ON COLUMN identity.sv_base.note IS 'described'",
        "GRANT SELECT ON identity.sv_base TO api_user",
        "DROP TABLE identity.sv_base",
        "CREATE TYPE identity.sv_mood AS ENUM ('ok')",
        "ALTER TABLE identity.sv_base ADD CONSTRAINT sv_note UNIQUE (note)",
    ],
)
def test_schema_version_changes_with_each_kind_of_ddl(stack: RunningStack, ddl: str) -> None:
    with admin(stack) as conn:
        conn.execute("DROP TABLE IF EXISTS identity.sv_base CASCADE")
        conn.execute("DROP TABLE IF EXISTS identity.sv_new")
        conn.execute("DROP FUNCTION IF EXISTS identity.sv_fn()")
        conn.execute("DROP TYPE IF EXISTS identity.sv_mood")
        conn.execute("CREATE TABLE identity.sv_base (id bigint PRIMARY KEY, note text)")
    before = version(stack, "identity")
    with admin(stack) as conn:
        conn.execute(ddl)
    assert version(stack, "identity") != before, ddl


def test_schema_version_ignores_data_and_maintenance_and_other_schemas(
    stack: RunningStack,
) -> None:
    with admin(stack) as conn:
        conn.execute("DROP TABLE IF EXISTS identity.sv_rows")
        conn.execute("CREATE TABLE identity.sv_rows (id bigint PRIMARY KEY, note text)")
    before = version(stack, "identity")
    with admin(stack) as conn:
        conn.execute("INSERT INTO identity.sv_rows SELECT g, 'x' FROM generate_series(1, 500) g")
        conn.execute("UPDATE identity.sv_rows SET note = 'y'")
        conn.execute("ANALYZE identity.sv_rows")
        conn.execute("VACUUM identity.sv_rows")
        conn.execute("DROP TABLE IF EXISTS content.sv_elsewhere")
        conn.execute("CREATE TABLE content.sv_elsewhere (id bigint PRIMARY KEY)")
    assert version(stack, "identity") == before
    assert version(stack, "identity") == version(stack, "identity")


def test_only_the_authenticator_is_granted_the_version(stack: RunningStack) -> None:
    with admin(stack) as conn:
        rows = conn.execute(
            "SELECT r.rolname FROM pg_roles r"
            " WHERE has_function_privilege(r.oid, 'platform.schema_version(name[])', 'EXECUTE')"
            "   AND NOT r.rolsuper AND r.rolname NOT LIKE 'pg\\_%'"
        ).fetchall()
    # The owner (admin role) and the authenticator; no API role, nothing by PUBLIC.
    names = {name for (name,) in rows}
    assert "postgrest" in names
    assert not {n for n in names if n.startswith("api_")}, names


def test_sidecar_signals_postgrest_after_a_schema_change(build: Path, stack: RunningStack) -> None:
    with admin(stack) as conn:
        conn.execute("DROP TABLE IF EXISTS identity.sv_sidecar")
    with running_reloader(build, stack, "identity", overrides={SCHEMA_POLL_ENV: str(POLL)}) as r:
        # First sync: once PostgREST has been seen running (never before: an early SIGUSR1
        # would kill it before it installs its handler).
        (first,) = r.wait_for_signals(1, timeout=30)
        with admin(stack) as conn:
            conn.execute("CREATE TABLE identity.sv_sidecar (id bigint PRIMARY KEY)")
        changed = time.time()
        signals = r.wait_for_signals(2, timeout=30)
        assert signals[1] > changed
        # Data changes are no schema change: no further reload.
        with admin(stack) as conn:
            conn.execute("INSERT INTO identity.sv_sidecar VALUES (1), (2)")
        time.sleep(3 * POLL + 0.5)
        assert len(r.signals()) == 2, r.output()
        assert "sent SIGUSR1 to postgrest" in r.output()
        assert first > 0


def test_a_migration_run_by_the_runner_reloads_the_domain_api(
    build: Path, stack: RunningStack, tmp_path: Path
) -> None:
    """The reload path after the migrations Job: its DDL commit, the poll, SIGUSR1.

    The runner sends no NOTIFY (it could not reach PostgREST through transaction pooling); the
    new migration's table changes ``platform.schema_version`` and the sidecar signals.
    """
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, root)
    (root / "identity" / "0002_reload_probe.sql").write_text(
        "CREATE TABLE identity.reload_probe (id bigint PRIMARY KEY);\n"
        "CREATE POLICY reload_probe_admin ON identity.reload_probe FOR ALL TO api_admin"
        " USING (true) WITH CHECK (true);\n"
    )
    plan = plan_migrations(("identity", "content", "analytics", "billing"), root)
    bundle = write_bundle(job_bundle(plan), tmp_path / "bundle").parent
    with running_reloader(build, stack, "identity", overrides={SCHEMA_POLL_ENV: str(POLL)}) as r:
        r.wait_for_signals(1, timeout=30)
        result = run_migrations(stack.cluster, stack.database, bundle)
        assert result.returncode == 0, result.stderr
        assert "identity/0002_reload_probe.sql: applied" in result.stdout
        applied = time.time()
        signals = r.wait_for_signals(2, timeout=30)
        assert signals[1] > applied
        # The next run applies nothing: no DDL, no further reload.
        assert "applying" not in run_migrations(stack.cluster, stack.database, bundle).stdout
        time.sleep(3 * POLL + 0.5)
        assert len(r.signals()) == 2, r.output()


def test_sidecar_survives_an_unreachable_database(build: Path, stack: RunningStack) -> None:
    """A failed poll is logged and retried; it never signals and never exits."""
    bad = {SCHEMA_POLL_ENV: str(POLL), "PGPASSWORD": "wrong-password"}
    with running_reloader(build, stack, "identity", overrides=bad) as r:
        time.sleep(3 * POLL + 0.5)
        assert r.process.poll() is None
        assert r.signals() == []
        assert "reading the schema version failed" in r.output()
