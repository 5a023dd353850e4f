"""The in-cluster way of applying the SQL baseline, replayed on a real PostgreSQL 15.

CloudNativePG mode, in the order the cluster goes through it: the superuser part from the
rendered bootstrap ConfigMap runs as ``postgres`` in a fresh database owned by the admin role
(``postInitApplicationSQLRefs``, before any role of the access plan exists); the access plan
follows (as ``DatabaseAccess`` leaves it: platform schemas owned by the admin); then the
rendered Job's command runs ``psql`` with the rendered ConfigMap files, the Job's environment
and the admin's credentials, over TLS with the stack's sslmode. Only host, port and file
locations differ from the manifests.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest
import yaml

from components.render.metrics_catalog import custom_query_sql
from tests.conftest import STACKS
from tests.integration.pg import PG_PACKAGE, PgCluster, running_cluster
from tests.integration.pooler import one
from tests.tooling import require_tool
from tools.drift import drift
from tools.migrate_db import rendered_migrations

pytestmark = pytest.mark.integration

ADMIN: Final = "pgplatform_admin"
ADMIN_PASSWORD: Final = "admin-test-password"
SQL_DIR: Final = "/etc/pgplatform/sql"
CA_FILE: Final = "/etc/pgplatform/db-ca/ca.crt"


@dataclass
class Rendered:
    """What the offline render of one stack says about the baseline."""

    build: Path
    bootstrap_sql: str
    bundle_dir: Path
    job: dict[str, Any]

    @property
    def container(self) -> dict[str, Any]:
        [psql] = self.job["spec"]["template"]["spec"]["containers"]
        return dict(psql)


def rendered(build: Path) -> Rendered:
    bootstrap = one(sorted((build / "files").glob("*-bootstrap-sql/superuser.sql")), "bootstrap")
    bundle = one(sorted((build / "files").glob("sql-baseline-sql-*")), "bundle ConfigMap")
    job_file = one(sorted((build / "manifests").glob("job_sql-baseline-job-*.yaml")), "Job")
    return Rendered(
        build=build,
        bootstrap_sql=bootstrap.read_text(),
        bundle_dir=bundle,
        job=yaml.safe_load(job_file.read_text()),
    )


@pytest.fixture(scope="module", params=STACKS)
def stack(
    request: pytest.FixtureRequest, rendered_stack: Callable[[str], Path]
) -> Iterator[tuple[Rendered, PgCluster]]:
    with running_cluster(tls_only=True) as cluster:
        with cluster.connect() as conn:
            # What CloudNativePG creates: the admin as a managed role (CREATEROLE, no superuser).
            conn.execute(
                f"CREATE ROLE {ADMIN} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS "
                f"PASSWORD '{ADMIN_PASSWORD}'"
            )
        yield rendered(rendered_stack(str(request.param))), cluster


def fresh_database(cluster: PgCluster, name: str) -> None:
    """``CREATE DATABASE ... OWNER`` the admin, as CloudNativePG's initdb bootstrap does."""
    with cluster.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" OWNER {ADMIN}')


def bootstrap(r: Rendered, cluster: PgCluster, database: str) -> None:
    """The superuser part, once, as CloudNativePG runs a referenced key (one batch)."""
    with cluster.connect(database) as conn:
        conn.execute(r.bootstrap_sql.encode())


def access_plan(r: Rendered, cluster: PgCluster, database: str) -> None:
    """The access plan as ``DatabaseAccess`` leaves it: platform and audit owned by the admin."""
    access = (r.build / "sql" / "010_access.sql").read_text()
    cluster.apply_sql(database, [("010_access.sql", access)])
    with cluster.connect(database) as conn:
        conn.execute(f"ALTER SCHEMA platform OWNER TO {ADMIN}")
        conn.execute(f"ALTER SCHEMA audit OWNER TO {ADMIN}")


def run_job(
    r: Rendered, cluster: PgCluster, database: str, *, user: str = ADMIN, password: str = ""
) -> subprocess.CompletedProcess[str]:
    """The Job's container command with its environment, as ``user`` (default the admin)."""
    psql = require_tool("psql", PG_PACKAGE)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cluster.base)}
    for item in r.container["env"]:
        name = item["name"]
        if "value" in item:
            env[name] = item["value"]
        else:
            key = item["valueFrom"]["secretKeyRef"]["key"]
            env[name] = {"username": user, "password": password or ADMIN_PASSWORD}[key]
    env |= {"PGHOST": cluster.host, "PGPORT": str(cluster.port), "PGDATABASE": database}
    if "PGSSLROOTCERT" in env:
        assert env["PGSSLROOTCERT"] == CA_FILE
        env["PGSSLROOTCERT"] = str(cluster.ca_file)
    command = [part.replace(SQL_DIR, str(r.bundle_dir)) for part in r.container["command"]]
    assert command[0] == "psql"
    return subprocess.run(
        [psql, *command[1:]], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def owner_of(conn: psycopg.Connection[Any], query: str) -> str:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return str(row[0])


def test_bootstrap_then_job_as_the_admin(stack: tuple[Rendered, PgCluster]) -> None:
    r, cluster = stack
    fresh_database(cluster, "app")
    bootstrap(r, cluster, "app")
    access_plan(r, cluster, "app")
    first = run_job(r, cluster, "app")
    assert first.returncode == 0, first.stderr
    # The cluster refuses logins without TLS, so the Job's sslmode was honoured.
    assert "installed" in first.stdout
    assert "platform baseline applied" in first.stdout
    second = run_job(r, cluster, "app")
    assert second.returncode == 0, second.stderr

    with cluster.connect("app") as conn:
        # Superuser-owned: what the admin could not have created.
        assert (
            owner_of(
                conn,
                "SELECT pg_get_userbyid(evtowner) FROM pg_event_trigger "
                "WHERE evtname = 'platform_rls_guard'",
            )
            == "postgres"
        )
        for function in ("platform.pgbouncer_get_auth(text)", "platform.rls_guard()"):
            assert owner_of(
                conn, f"SELECT pg_get_userbyid(proowner) FROM pg_proc "
                f"WHERE oid = '{function}'::regprocedure"
            ) == "postgres"  # fmt: skip
        # The audit trigger function belongs to the audit writer (INSERT on audit.log only).
        assert owner_of(
            conn, "SELECT pg_get_userbyid(proowner) FROM pg_proc "
            "WHERE oid = 'audit.record()'::regprocedure"
        ) == "pgplatform_audit_writer"  # fmt: skip
        # Admin-owned: everything else.
        for function in ("platform.pre_request()", "platform.jwt_sub()"):
            assert owner_of(
                conn, f"SELECT pg_get_userbyid(proowner) FROM pg_proc "
                f"WHERE oid = '{function}'::regprocedure"
            ) == ADMIN  # fmt: skip
        assert conn.execute("SELECT name FROM platform.exposed_schema ORDER BY 1").fetchall()

        # The guard secures tables the schema owner creates, and the lookup role may look up.
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE pgplatform_owner")
            conn.execute("CREATE TABLE content.made_after_the_job (id int)")
            assert conn.execute(
                "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                "WHERE oid = 'content.made_after_the_job'::regclass"
            ).fetchone() == (True,)
        conn.execute("ALTER ROLE postgrest PASSWORD 'p'")
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE pgbouncer_auth")
            [(name, verifier)] = conn.execute(
                "SELECT * FROM platform.pgbouncer_get_auth('postgrest')"
            ).fetchall()
            assert name == "postgrest"
            assert verifier.startswith("SCRAM-SHA-256$")


def migrations_job(r: Rendered) -> Rendered:
    """The rendered migrations Job and its ConfigMap, shaped like the baseline's."""
    job_file = one(
        sorted((r.build / "manifests").glob("job_sql-baseline-migrations-job-*.yaml")), "Job"
    )
    return Rendered(
        build=r.build,
        bootstrap_sql=r.bootstrap_sql,
        bundle_dir=rendered_migrations(r.build),
        job=yaml.safe_load(job_file.read_text()),
    )


def test_the_migrations_job_applies_as_the_schema_owner(
    stack: tuple[Rendered, PgCluster],
) -> None:
    """The rendered migrations Job, as the admin (no superuser, not yet a member of the owner)."""
    r, cluster = stack
    migrations = migrations_job(r)
    fresh_database(cluster, "app")
    bootstrap(r, cluster, "app")
    access_plan(r, cluster, "app")
    assert run_job(r, cluster, "app").returncode == 0
    first = run_job(migrations, cluster, "app")
    assert first.returncode == 0, first.stderr
    assert "identity/0001_accounts.sql: applied" in first.stdout
    second = run_job(migrations, cluster, "app")
    assert second.returncode == 0, second.stderr
    assert "applying" not in second.stdout
    with cluster.connect("app") as conn:
        assert owner_of(
            conn, "SELECT pg_get_userbyid(relowner) FROM pg_class "
            "WHERE oid = 'content.articles'::regclass"
        ) == "pgplatform_owner"  # fmt: skip
        assert conn.execute("SELECT DISTINCT applied_by FROM platform.migration").fetchall() == [
            (ADMIN,)
        ]
        # The guard forced RLS on what the migration created.
        assert conn.execute(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
            "WHERE oid = 'billing.invoices'::regclass"
        ).fetchone() == (True,)
    # Built the in-cluster way (admin-owned database, superuser part at bootstrap, Jobs as the
    # admin), the catalog is the one tools.drift expects: no drift.
    live = (
        f"host={cluster.socket_dir} port={cluster.port} dbname=app"
        f" user={cluster.superuser} password={cluster.superuser_password}"
    )
    assert drift(r.build, live) == []


def test_the_admin_cannot_do_the_superuser_part(stack: tuple[Rendered, PgCluster]) -> None:
    """Why the split exists: as the admin, the event trigger and the lookup are impossible."""
    r, cluster = stack
    fresh_database(cluster, "bare")
    access_plan(r, cluster, "bare")
    with cluster.connect_as(ADMIN, ADMIN_PASSWORD, dbname="bare", autocommit=False) as conn:
        guard = next(text for name, text in _bundle(r) if name == "040_rls_guard.sql")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="event trigger"):
            conn.execute(guard.encode())
    # Without the superuser part, the Job refuses and says what to do; nothing is applied.
    result = run_job(r, cluster, "bare")
    assert result.returncode != 0
    assert "superuser part of the baseline: installed none" in result.stderr
    assert "superuser.sql" in result.stderr
    with cluster.connect("bare") as conn:
        assert conn.execute("SELECT to_regprocedure('platform.pre_request()')").fetchone() == (
            None,
        )


def test_a_changed_superuser_part_stops_the_job(stack: tuple[Rendered, PgCluster]) -> None:
    r, cluster = stack
    fresh_database(cluster, "outdated")
    bootstrap(r, cluster, "outdated")
    access_plan(r, cluster, "outdated")
    with cluster.connect("outdated") as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION platform.superuser_baseline() RETURNS text "
            "LANGUAGE sql IMMUTABLE AS $$ SELECT 'previous-release'::text $$"
        )
    result = run_job(r, cluster, "outdated")
    assert result.returncode != 0
    assert "installed previous-release, this bundle needs" in result.stderr
    # As a superuser (an external database whose admin is one) the Job applies it itself.
    superuser = run_job(
        r, cluster, "outdated", user="postgres", password=cluster.superuser_password
    )
    assert superuser.returncode == 0, superuser.stderr
    assert "applying" in superuser.stdout
    assert run_job(r, cluster, "outdated").returncode == 0


def test_a_replaced_registry_is_never_read_as_superuser(stack: tuple[Rendered, PgCluster]) -> None:
    """The admin owns schema platform and can swap the guard's registry for a view whose
    function would run with the guard's superuser rights: the guard refuses instead."""
    r, cluster = stack
    fresh_database(cluster, "swap")
    bootstrap(r, cluster, "swap")
    access_plan(r, cluster, "swap")
    assert run_job(r, cluster, "swap").returncode == 0
    with cluster.connect_as(ADMIN, ADMIN_PASSWORD, dbname="swap") as admin:
        admin.execute("DROP TABLE platform.exposed_schema")
        admin.execute(
            f"CREATE FUNCTION platform.escalate() RETURNS SETOF name LANGUAGE plpgsql AS $$ "
            f"BEGIN ALTER ROLE {ADMIN} SUPERUSER; RETURN NEXT 'content'::name; END $$"
        )
        admin.execute("CREATE VIEW platform.exposed_schema AS SELECT platform.escalate() AS name")
    with cluster.connect("swap") as conn:
        conn.execute("SET ROLE pgplatform_owner")
        with pytest.raises(psycopg.Error, match="missing or was replaced"):
            conn.execute("CREATE TABLE content.after_the_swap (id int)")
        conn.execute("RESET ROLE")
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (ADMIN,)
        ).fetchone() == (False,)


def _bundle(r: Rendered) -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(r.bundle_dir.iterdir())]


def _guard_metric(cluster: PgCluster, database: str) -> list[tuple[Any, ...]]:
    """The exporters' guard query (``pg_platform_guard``), as it runs in the database."""
    query = custom_query_sql("external")["pg_platform_guard"]
    assert query == custom_query_sql("cnpg")["pg_platform_guard"]
    with cluster.connect(database) as conn:
        return conn.execute(query).fetchall()


def test_a_dropped_rls_guard_stops_the_job_and_shows_in_the_metric(
    stack: tuple[Rendered, PgCluster],
) -> None:
    """The admin owns schema platform: DROP FUNCTION ... CASCADE takes the event trigger with it
    without an error. The Job refuses to run on, and the exporters' query reports 0."""
    r, cluster = stack
    fresh_database(cluster, "unguarded")
    bootstrap(r, cluster, "unguarded")
    access_plan(r, cluster, "unguarded")
    assert run_job(r, cluster, "unguarded").returncode == 0
    assert _guard_metric(cluster, "unguarded") == [("unguarded", 1)]
    with cluster.connect_as(ADMIN, ADMIN_PASSWORD, dbname="unguarded") as admin:
        admin.execute("DROP FUNCTION platform.rls_guard() CASCADE")
    assert _guard_metric(cluster, "unguarded") == [("unguarded", 0)]
    result = run_job(r, cluster, "unguarded")
    assert result.returncode != 0
    assert "without its RLS guard" in result.stderr, result.stderr
    # A superuser re-applies the superuser part (the runbook's mitigation); the Job then passes.
    repaired = run_job(
        r, cluster, "unguarded", user="postgres", password=cluster.superuser_password
    )
    assert repaired.returncode == 0, repaired.stderr
    assert "applying" in repaired.stdout
    assert _guard_metric(cluster, "unguarded") == [("unguarded", 1)]
    assert run_job(r, cluster, "unguarded").returncode == 0


def test_the_job_as_the_admin_masks_the_tables_the_migrations_created(
    stack: tuple[Rendered, PgCluster],
) -> None:
    """The admin (CREATEROLE, no superuser) runs apply_masking: first deploy before the domain
    tables exist (skipped), then again after them (masked), then once more (nothing changes)."""
    r, cluster = stack
    # Database "app": the access plan grants CONNECT on it.
    fresh_database(cluster, "app")
    bootstrap(r, cluster, "app")
    access_plan(r, cluster, "app")
    first = run_job(r, cluster, "app")
    assert first.returncode == 0, first.stderr[-1500:]
    # The migrations Job creates the tables (and masks them: it runs apply_masking after them).
    migrated = run_job(migrations_job(r), cluster, "app")
    assert migrated.returncode == 0, migrated.stderr[-1500:]
    again = run_job(r, cluster, "app")
    assert again.returncode == 0, again.stderr[-1500:]
    masked = "INSERT INTO platform.masking_rule" in (r.bundle_dir / "094_masking.sql").read_text()
    with cluster.connect("app") as conn:
        conn.execute(
            "INSERT INTO identity.accounts (sub, display_name, email) "
            "VALUES ('job-user', 'Job', 'job@example.com')"
        )
        view = owner_of(
            conn,
            "SELECT c.relkind::text || ':' || pg_get_userbyid(c.relowner) FROM pg_class c "
            "WHERE c.oid = 'identity.accounts'::regclass",
        )
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE api_user")
            conn.execute("SELECT set_config('request.jwt.claims', '{\"sub\": \"job-user\"}', true)")
            email = owner_of(conn, "SELECT email FROM identity.accounts")
    assert (view, email) == (
        ("v:pgplatform_masking", "j***") if masked else ("r:pgplatform_owner", "job@example.com")
    )
    last = run_job(r, cluster, "app")
    assert last.returncode == 0, last.stderr[-1500:]
