"""The rendered SQL bundle on a real PostgreSQL 15: the authenticator and the API roles.

Each stack gets its own cluster: roles are cluster-wide, and staging's anonymous role must not
leak into the prod checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.pg import PgCluster, running_cluster

pytestmark = pytest.mark.integration

DATABASE = "app"
AUTH_PASSWORD = "authenticator-test-password"
EXPECTED_MEMBERS = {
    "staging": {
        "api_anonymous",
        "api_user",
        "api_editor",
        "api_admin",
        "api_service_cms",
        "api_service_ingest",
        "api_service_support",
    },
    "prod": {"api_user", "api_editor", "api_admin", "api_service_cms"},
}


def sql_files(build: Path) -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted((build / "sql").glob("*.sql"))]


@pytest.fixture(scope="module", params=["staging", "prod"])
def stack_db(
    request: pytest.FixtureRequest, rendered_stack: Callable[[str], Path]
) -> Iterator[tuple[str, PgCluster]]:
    stack = str(request.param)
    files = sql_files(rendered_stack(stack))
    assert files[0][0] == "010_access.sql"
    with running_cluster() as cluster:
        cluster.create_database(DATABASE)
        cluster.apply_sql(DATABASE, files)
        cluster.apply_sql(DATABASE, files)  # idempotent: a second apply must succeed
        with cluster.connect(DATABASE) as conn:
            conn.execute(f"ALTER ROLE postgrest PASSWORD '{AUTH_PASSWORD}'")
            # Tables created later by the schema owner, as a migration would.
            conn.execute("SET ROLE pgplatform_owner")
            for schema in ("identity", "content", "analytics"):
                conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.probe (id int, note text)")
            conn.execute("RESET ROLE")
            for schema in ("identity", "content", "analytics"):  # superuser: RLS does not apply
                conn.execute(f"INSERT INTO {schema}.probe VALUES (1, 'x')")
        yield stack, cluster


def _members(cluster: PgCluster, role: str) -> set[str]:
    with cluster.connect(DATABASE) as conn:
        rows = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
            (role,),
        ).fetchall()
    return {r[0] for r in rows}


def test_authenticator_is_granted_exactly_the_api_roles(stack_db: tuple[str, PgCluster]) -> None:
    stack, cluster = stack_db
    assert _members(cluster, "postgrest") == EXPECTED_MEMBERS[stack]


def test_authenticator_cannot_read_any_table_on_its_own(stack_db: tuple[str, PgCluster]) -> None:
    _, cluster = stack_db
    with cluster.connect(DATABASE) as conn:
        readable = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND has_table_privilege('postgrest', c.oid, 'SELECT')"
        ).fetchall()
    assert readable == []
    with cluster.connect_as("postgrest", AUTH_PASSWORD, dbname=DATABASE) as conn:
        for schema in ("identity", "content", "analytics"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {schema}.probe")


def test_authenticator_switches_only_to_granted_roles(stack_db: tuple[str, PgCluster]) -> None:
    stack, cluster = stack_db
    with cluster.connect_as("postgrest", AUTH_PASSWORD, dbname=DATABASE) as conn:
        for role in sorted(EXPECTED_MEMBERS[stack]):
            conn.execute(f"SET ROLE {role}")
            conn.execute("RESET ROLE")
        forbidden = ["postgres", "pgplatform_owner", "pg_read_all_data", "pg_monitor"]
        if stack == "prod":
            with cluster.connect(DATABASE) as admin:
                exists = admin.execute(
                    "SELECT count(*) FROM pg_roles WHERE rolname = 'api_anonymous'"
                ).fetchone()
            assert exists == (0,), "prod must not even create the anonymous role"
        for role in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SET ROLE {role}")


def test_no_api_role_bypasses_rls(stack_db: tuple[str, PgCluster]) -> None:
    _, cluster = stack_db
    with cluster.connect(DATABASE) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolinherit, "
            "rolcanlogin FROM pg_roles WHERE rolname LIKE 'api\\_%' OR rolname = 'postgrest'"
        ).fetchall()
    assert rows
    for name, superuser, bypass, createrole, createdb, inherit, login in rows:
        assert not superuser, name
        assert not bypass, name
        assert not createrole, name
        assert not createdb, name
        assert not inherit, name
        assert login == (name == "postgrest"), name


def test_table_privileges_follow_the_role_matrix(stack_db: tuple[str, PgCluster]) -> None:
    _, cluster = stack_db
    expected = {
        "api_user": {"SELECT"},
        "api_editor": {"SELECT", "INSERT", "UPDATE"},
        "api_admin": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    }
    with cluster.connect(DATABASE) as conn:
        for role, privileges in expected.items():
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                (allowed,) = conn.execute(
                    "SELECT has_table_privilege(%s, 'content.probe', %s)", (role, privilege)
                ).fetchone() or (None,)
                assert allowed == (privilege in privileges), (role, privilege)
        # The machine client reaches only its configured schema.
        (cms_content,) = conn.execute(
            "SELECT has_table_privilege('api_service_cms', 'content.probe', 'INSERT')"
        ).fetchone() or (None,)
        (cms_identity,) = conn.execute(
            "SELECT has_schema_privilege('api_service_cms', 'identity', 'USAGE')"
        ).fetchone() or (None,)
        assert (cms_content, cms_identity) == (True, False)
        (timeout,) = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = 'api_user'"
        ).fetchone() or (None,)
        assert timeout == ["statement_timeout=5000"]
