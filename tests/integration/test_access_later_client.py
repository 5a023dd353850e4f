"""A machine client configured after tables exist reads them, on a real PostgreSQL 15.

Default privileges reach only objects created after them. The stack is deployed, migrations
create tables, a sequence and a function, and only then is the client ``reporting`` (read on
``analytics`` and ``content``) added to the config and the access plan applied again, the way
the next ``pulumi up`` applies it. A policy names the new role, and a request as PostgREST makes
it (authenticator, ``SET LOCAL ROLE``, claims) reads the rows and the function (no sequence).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from components import inputs
from components.render.access import render_access_sql, service_role
from components.settings import StackSettings, decode_config_value, parse_settings
from tests.conftest import stack_config
from tests.integration.pg import PgCluster, running_cluster

pytestmark = pytest.mark.integration

REPORTING = service_role("reporting")
AUTH_PASSWORD = "authenticator-test-password"


def _settings(extra_services: list[dict[str, Any]]) -> StackSettings:
    config, secrets = stack_config("staging")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["services"] = [*raw.get("services", []), *extra_services]
    return parse_settings("staging", raw, [k.split(":", 1)[1] for k in secrets])


MIGRATION = """
SET ROLE pgplatform_owner;
CREATE TABLE analytics.events (id bigserial PRIMARY KEY, kind text NOT NULL);
CREATE TABLE content.pages (id bigserial PRIMARY KEY, title text NOT NULL);
CREATE TABLE identity.accounts (id bigserial PRIMARY KEY, email text NOT NULL);
CREATE FUNCTION analytics.event_kinds() RETURNS bigint
    LANGUAGE sql STABLE AS 'SELECT count(DISTINCT kind) FROM analytics.events';
RESET ROLE;
INSERT INTO analytics.events (kind) VALUES ('view'), ('click'), ('view');
INSERT INTO content.pages (title) VALUES ('home');
INSERT INTO identity.accounts (email) VALUES ('a@example.com');
"""

POLICIES = f"""
SET ROLE pgplatform_owner;
CREATE POLICY reporting_reads ON analytics.events FOR SELECT TO {REPORTING} USING (true);
CREATE POLICY reporting_reads ON content.pages FOR SELECT TO {REPORTING} USING (true);
RESET ROLE;
"""


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[PgCluster, str]]:
    before = _settings([])
    after = _settings([{"name": "reporting", "schemas": ["analytics", "content"]}])
    db = before.postgres.database
    with running_cluster() as cluster:
        cluster.create_database(db)
        cluster.apply_sql(db, inputs.sql_files(before))
        cluster.apply_sql(db, [("migration.sql", MIGRATION)])
        # The client is added to the config; the next deploy applies the plan again.
        assert REPORTING not in inputs.access_plan(before).api_roles
        cluster.apply_sql(db, inputs.sql_files(after))
        cluster.apply_sql(db, [("policies.sql", POLICIES)])
        with cluster.connect(db) as conn:
            conn.execute(f"ALTER ROLE postgrest PASSWORD '{AUTH_PASSWORD}'")
        yield cluster, db


def _as_reporting(cluster: PgCluster, db: str, sql: str) -> list[tuple[Any, ...]]:
    """One PostgREST-style request of the client: its role and claims for one transaction."""
    claims = json.dumps({"role": REPORTING, "sub": "reporting"})
    with cluster.connect_as("postgrest", AUTH_PASSWORD, dbname=db) as conn, conn.transaction():
        conn.execute(f"SET LOCAL ROLE {REPORTING}")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
        return conn.execute(sql.encode()).fetchall()


def test_new_client_reads_tables_that_existed_before_it(database: tuple[PgCluster, str]) -> None:
    cluster, db = database
    assert _as_reporting(cluster, db, "SELECT count(*) FROM analytics.events") == [(3,)]
    assert _as_reporting(cluster, db, "SELECT title FROM content.pages") == [("home",)]


def test_new_client_uses_existing_functions_but_no_sequence(
    database: tuple[PgCluster, str],
) -> None:
    """API roles hold nothing on sequences: a position would reveal a table's row count."""
    cluster, db = database
    assert _as_reporting(cluster, db, "SELECT analytics.event_kinds()") == [(2,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_reporting(cluster, db, "SELECT last_value FROM analytics.events_id_seq")


def test_new_client_gets_read_only_and_only_its_schemas(database: tuple[PgCluster, str]) -> None:
    cluster, db = database
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_reporting(cluster, db, "INSERT INTO analytics.events (kind) VALUES ('x')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_reporting(cluster, db, "SELECT nextval('analytics.events_id_seq')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_reporting(cluster, db, "SELECT * FROM identity.accounts")


def test_rls_still_decides_which_rows(database: tuple[PgCluster, str]) -> None:
    """The grant opens the table; rows still come only through a policy naming the role."""
    cluster, db = database
    with cluster.connect(db) as conn:
        conn.execute("SET ROLE pgplatform_owner")
        conn.execute("DROP POLICY reporting_reads ON content.pages")
        conn.execute("RESET ROLE")
    try:
        assert _as_reporting(cluster, db, "SELECT count(*) FROM content.pages") == [(0,)]
    finally:
        cluster.apply_sql(
            db,
            [
                (
                    "policy.sql",
                    "SET ROLE pgplatform_owner; CREATE POLICY reporting_reads ON content.pages "
                    f"FOR SELECT TO {REPORTING} USING (true); RESET ROLE;",
                )
            ],
        )


def test_the_same_plan_carries_the_existing_object_grants() -> None:
    plan = inputs.access_plan(
        _settings([{"name": "reporting", "schemas": ["analytics", "content"]}])
    )
    sql = render_access_sql(plan, "app")
    for schema in ("analytics", "content"):
        assert f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{REPORTING}";' in sql
    assert f'ON ALL TABLES IN SCHEMA "identity" TO "{REPORTING}"' not in sql
