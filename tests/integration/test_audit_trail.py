"""DDL and role changes in the audit trail, on PostgreSQL 15 with pgaudit really loaded.

The cluster runs with ``shared_preload_libraries`` holding pgaudit (as CloudNativePG sets it
when a ``pgaudit.*`` parameter is present) and exactly the ``pgaudit.*`` parameters the prod
render puts into the Cluster. Then the baseline: its event triggers write each DDL command
into ``audit.log``, and pgaudit writes schema and role changes to the server log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.pg import PG_BIN, PgCluster, running_cluster
from tests.integration.test_baseline_sql import DATABASE, prepare_stack_database
from tests.tooling import in_ci

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def rendered_pgaudit_parameters(build: Path) -> dict[str, str]:
    """The ``pgaudit.*`` parameters of the rendered database Cluster."""
    cluster = yaml.safe_load((build / "manifests" / "cluster_postgres-db.yaml").read_text())
    parameters = cluster["spec"]["postgresql"]["parameters"]
    return {key: str(value) for key, value in parameters.items() if key.startswith("pgaudit.")}


def pgaudit_server_settings(build: Path) -> dict[str, str]:
    """postgresql.conf lines: the rendered parameters, and the library CloudNativePG adds."""
    rendered = rendered_pgaudit_parameters(build)
    assert rendered, "the render sets no pgaudit parameter"
    quoted = {key: "'" + value.replace("'", "''") + "'" for key, value in rendered.items()}
    return {"shared_preload_libraries": "'pg_stat_statements,pgaudit'", **quoted}


def require_pgaudit() -> None:
    """pgaudit's library next to the server; CI fails without it, elsewhere the test skips."""
    library = PG_BIN.parent / "lib" / "pgaudit.so"
    if not library.is_file():
        message = f"{library} not found: install the 'postgresql-15-pgaudit' package"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def audited(rendered_stack: Callable[[str], Path]) -> Iterator[PgCluster]:
    require_pgaudit()
    build = rendered_stack("prod")
    with running_cluster(settings=pgaudit_server_settings(build)) as cluster:
        dbname = cluster.create_database(DATABASE)
        with cluster.connect(dbname) as conn:
            # What the operator runs in every database once a pgaudit parameter is set.
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgaudit")
        prepare_stack_database(cluster, dbname, rendered_stack("staging"))
        yield cluster


@pytest.fixture
def admin(audited: PgCluster) -> Iterator[Conn]:
    with audited.connect(DATABASE) as conn:
        yield conn


def ddl_rows(conn: Conn, tag: str, identity: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT schema_name, table_name, role, coalesce(new_row, old_row) ->> 'object_type' "
        "FROM audit.log WHERE op = 'DDL' "
        "AND coalesce(new_row, old_row) ->> 'command_tag' = %s "
        "AND coalesce(new_row, old_row) ->> 'object_identity' = %s ORDER BY id",
        (tag, identity),
    ).fetchall()


def test_rendered_pgaudit_settings_are_live(admin: Conn) -> None:
    """The server runs with pgaudit loaded and the render's classes (prod: ddl and role)."""
    assert admin.execute("SHOW pgaudit.log").fetchone() == ("role, ddl",)
    assert admin.execute("SHOW pgaudit.log_parameter").fetchone() == ("off",)


def test_ddl_lands_in_audit_log_once_with_its_role(admin: Conn) -> None:
    with admin.transaction():
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        admin.execute("CREATE TABLE content.notes (id bigint PRIMARY KEY, body text)")
    assert ddl_rows(admin, "CREATE TABLE", "content.notes") == [
        ("content", "notes", "pgplatform_owner", "table")
    ]
    with admin.transaction():
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        admin.execute("DROP TABLE content.notes")
    assert ddl_rows(admin, "DROP TABLE", "content.notes") == [
        ("content", "notes", "pgplatform_owner", "table")
    ]


def test_rolled_back_ddl_leaves_no_row(admin: Conn) -> None:
    with admin.transaction(force_rollback=True):
        admin.execute("CREATE TABLE content.never (id bigint)")
    assert ddl_rows(admin, "CREATE TABLE", "content.never") == []


def test_grants_are_recorded(admin: Conn) -> None:
    admin.execute("CREATE TABLE content.granted (id bigint)")
    admin.execute("GRANT SELECT ON content.granted TO api_admin")
    row = admin.execute(
        "SELECT new_row ->> 'object_type' FROM audit.log WHERE op = 'DDL' "
        "AND new_row ->> 'command_tag' = 'GRANT' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert row == ("TABLE",)


def test_ddl_rows_cannot_be_forged(admin: Conn) -> None:
    """Outside an event trigger the writer fails, even for a superuser; others may not call it."""
    with admin.transaction(force_rollback=True), pytest.raises(psycopg.errors.Error) as error:
        admin.execute("SELECT audit.record_ddl('ddl_command_end', 'CREATE TABLE')")
    assert "can only be called in an event trigger function" in str(error.value)
    with admin.transaction(force_rollback=True):
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.execute("SELECT audit.record_ddl('ddl_command_end', 'CREATE TABLE')")


def test_a_replaced_writer_never_runs_as_superuser(admin: Conn) -> None:
    """The dispatcher skips a writer that is not SECURITY DEFINER of a non-superuser."""
    with admin.transaction(force_rollback=True):
        admin.execute(
            "CREATE OR REPLACE FUNCTION audit.record_ddl(event text, tag text) RETURNS void "
            "LANGUAGE sql SECURITY INVOKER AS $$ CREATE TABLE public.escalated (x int) $$"
        )
        admin.execute("CREATE TABLE content.trigger_it (id bigint)")
        found = admin.execute("SELECT to_regclass('public.escalated')").fetchone()
    assert found == (None,)


def test_pgaudit_logs_schema_and_role_changes_without_passwords(
    audited: PgCluster, admin: Conn
) -> None:
    admin.execute("CREATE TABLE content.logged (id bigint)")
    admin.execute("CREATE ROLE audit_probe NOLOGIN")
    admin.execute("ALTER ROLE audit_probe LOGIN PASSWORD 'probe-secret-7'")
    admin.execute("DROP ROLE audit_probe")
    log = audited.server_log()
    assert re.search(r"AUDIT: SESSION,\d+,\d+,DDL,CREATE TABLE,TABLE,content\.logged,", log)
    for tag in ("CREATE ROLE", "ALTER ROLE", "DROP ROLE"):
        assert re.search(rf"AUDIT: SESSION,\d+,\d+,ROLE,{tag},", log), tag
    assert "PASSWORD <REDACTED>" in log
    assert "probe-secret-7" not in log
