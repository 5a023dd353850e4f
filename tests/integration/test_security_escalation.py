"""Attacks on the platform's own privileged code and on what lies beyond the API schemas.

Same set-up as ``test_security_model.py`` (its ``env`` fixture: each stack's offline render on a
TLS-only PostgreSQL 15 behind the rendered PgBouncer). Each test is an escalation path that must
stay closed: owner code run with a definer's rights, the pooler's password lookup, session state
left on a pooled server connection, the maintenance database, large objects, sequence positions,
RLS guard gaps, a policy that lets a row change hands, and functions with a mutable search_path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

import psycopg
import pytest

from tests.integration.pooler import PASSWORDS, RunningStack
from tests.integration.test_security_model import claims, env, request

pytestmark = pytest.mark.integration

__all__ = ["env"]  # the stack fixture, shared with the security model's tests

Conn = psycopg.Connection[Any]
ROGUE_PASSWORD: Final = "rogue-test-password"


@pytest.fixture
def admin(env: RunningStack) -> Iterator[Conn]:
    """A superuser session in the stack's database (set-up and inspection only)."""
    with env.cluster.connect(env.database) as conn:
        yield conn


def as_owner(admin: Conn, *statements: str) -> None:
    """Run ``statements`` as the domain schema owner, as a migration would."""
    with admin.transaction():
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        for statement in statements:
            admin.execute(statement)


# -- 1. owner code inside the audit trigger ----------------------------------------------------
_PROBE = """
CREATE FUNCTION content.mood_json(content.mood) RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    seen jsonb := pg_catalog.jsonb_build_object('as', current_user::text);
BEGIN
    BEGIN
        ALTER ROLE pgplatform_owner SUPERUSER;
        seen := seen || '{"superuser": true}';
    EXCEPTION WHEN insufficient_privilege THEN
        seen := seen || '{"superuser": false}';
    END;
    BEGIN
        PERFORM FROM audit.log LIMIT 1;
        seen := seen || '{"read_log": true}';
    EXCEPTION WHEN insufficient_privilege THEN
        seen := seen || '{"read_log": false}';
    END;
    BEGIN
        DELETE FROM audit.log WHERE id < 0;
        seen := seen || '{"erase_log": true}';
    EXCEPTION WHEN insufficient_privilege THEN
        seen := seen || '{"erase_log": false}';
    END;
    RETURN seen::json;
END
$$
"""


def test_owner_code_in_the_audit_trigger_gets_no_extra_rights(
    env: RunningStack, admin: Conn
) -> None:
    """The schema owner makes to_jsonb(NEW) run its own cast; an API write fires it."""
    as_owner(
        admin,
        "CREATE TYPE content.mood AS ENUM ('calm')",
        _PROBE,
        "CREATE CAST (content.mood AS json) WITH FUNCTION content.mood_json(content.mood)",
        "CREATE TABLE content.moods (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "author_sub text NOT NULL DEFAULT platform.jwt_sub(), "
        "mood content.mood NOT NULL DEFAULT 'calm')",
        "CREATE POLICY moods_own ON content.moods FOR ALL TO api_editor "
        "USING (author_sub = (SELECT platform.jwt_sub())) "
        "WITH CHECK (author_sub = (SELECT platform.jwt_sub()))",
        "SELECT platform.enable_audit('content.moods')",
    )
    try:
        with env.connect() as client:
            [(txid,)] = request(
                client,
                "api_editor",
                claims("api_editor", "mood-writer"),
                "INSERT INTO content.moods DEFAULT VALUES RETURNING txid_current()",
            )
        [(seen,)] = admin.execute(
            "SELECT new_row -> 'mood' FROM audit.log WHERE txid = %s", (txid,)
        ).fetchall()
        # The write was audited, and the owner's code ran as the audit writer, which holds
        # INSERT on audit.log and nothing else.
        assert seen == {
            "as": "pgplatform_audit_writer",
            "superuser": False,
            "read_log": False,
            "erase_log": False,
        }
        assert admin.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'pgplatform_owner'"
        ).fetchone() == (False,)
    finally:
        admin.execute("ALTER ROLE pgplatform_owner NOSUPERUSER")
        admin.execute("DROP TABLE content.moods")
        admin.execute("DROP CAST (content.mood AS json)")
        admin.execute("DROP FUNCTION content.mood_json(content.mood)")
        admin.execute("DROP TYPE content.mood")


def test_every_security_definer_function_is_owned_for_its_purpose(admin: Conn) -> None:
    """Superuser-owned only where a superuser is needed (pg_authid, event trigger, any table's
    RLS); the audit writers, which run owner code or live in the owner's schema, by the audit
    writer."""
    owners = dict(
        admin.execute(
            "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    )
    assert owners == {
        "audit.record()": "pgplatform_audit_writer",
        "audit.record_ddl(text,text)": "pgplatform_audit_writer",
        "platform.audit_ddl()": "postgres",
        "platform.enforce_rls(regclass)": "postgres",
        "platform.rls_guard()": "postgres",
        "platform.pgbouncer_get_auth(text)": "postgres",
    }
    [(attributes, memberships)] = admin.execute(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolcanlogin, "
        "(SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) "
        "FROM pg_roles r WHERE rolname = 'pgplatform_audit_writer'"
    ).fetchall()
    assert (attributes, memberships) == (False, 0)


# -- 2. the pooler's password lookup ------------------------------------------------------------
def _lookup(env: RunningStack, login: str) -> list[tuple[Any, ...]]:
    with env.cluster.connect_as(
        "pgbouncer_auth", PASSWORDS["pgbouncer_auth"], dbname=env.database
    ) as conn:
        return conn.execute(
            "SELECT usename FROM platform.pgbouncer_get_auth(%s)", (login,)
        ).fetchall()


@pytest.mark.parametrize(
    ("login", "attributes", "member_of"),
    [
        ("rogue_admin", "CREATEROLE", None),
        ("rogue_program", "", "pg_execute_server_program"),
        ("rogue_files", "", "pg_read_server_files"),
        ("rogue_superuser_member", "", "postgres"),
        ("rogue_plain", "", None),
    ],
)
def test_pooler_lookup_serves_no_other_login(
    env: RunningStack, admin: Conn, login: str, attributes: str, member_of: str | None
) -> None:
    admin.execute(f"CREATE ROLE {login} LOGIN {attributes} PASSWORD '{ROGUE_PASSWORD}'")
    try:
        if member_of:
            admin.execute(f"GRANT {member_of} TO {login}")
        assert _lookup(env, login) == []
        with pytest.raises(psycopg.OperationalError):
            env.pgbouncer.connect(login, ROGUE_PASSWORD, env.rw_pool)
    finally:
        admin.execute(f"DROP ROLE {login}")


@pytest.mark.parametrize("powerful", ["pg_execute_server_program", "pg_write_server_files"])
def test_an_authenticator_with_more_power_is_not_served(
    env: RunningStack, admin: Conn, powerful: str
) -> None:
    """Granted a powerful role (directly or through another role), even postgrest is refused."""
    assert _lookup(env, "postgrest") == [("postgrest",)]
    admin.execute("CREATE ROLE rogue_group NOLOGIN")
    try:
        admin.execute(f"GRANT {powerful} TO rogue_group")
        admin.execute("GRANT rogue_group TO postgrest")
        assert _lookup(env, "postgrest") == []
    finally:
        admin.execute("DROP ROLE rogue_group")
    assert _lookup(env, "postgrest") == [("postgrest",)]


# -- 4. session state on a pooled server connection --------------------------------------------
def _same_server_pair(env: RunningStack) -> tuple[Conn, Conn, int]:
    """Two clients whose next transactions land on the same server connection (PgBouncer hands
    out the most recently used one); the server pid tells."""
    first = env.connect()
    second = env.connect()
    pid = first.execute("SELECT pg_backend_pid()").fetchone()
    for _ in range(20):
        again = second.execute("SELECT pg_backend_pid()").fetchone()
        if again == pid:
            assert pid is not None
            return first, second, int(pid[0])
        pid = first.execute("SELECT pg_backend_pid()").fetchone()
    first.close()
    second.close()
    raise AssertionError("PgBouncer never reused a server connection between two clients")


def test_session_state_left_on_a_pooled_connection(env: RunningStack) -> None:
    """What the next client on the same server connection sees (docs/database.md, "Session
    state under transaction pooling"): the reset after every transaction (DISCARD ALL) cost
    more than the 10 % it was allowed, so it is off and this is the residual risk. A request
    leaves a WITH HOLD cursor, session settings and an advisory lock behind; the next client
    sees them, but PostgREST's per-request transaction (SET LOCAL ROLE, transaction-local claims)
    replaces the role and the claims, so its policies see its own token only."""
    pool = env.ini["pgbouncer"]
    assert pool.get("server_reset_query_always", "0") == "0"
    first, second, pid = _same_server_pair(env)
    with first, second:
        request(
            first,
            "api_editor",
            claims("api_editor", "leaver"),
            "SELECT set_config('request.jwt.claims', %s, false), "
            "set_config('pgplatform.note', 'left behind', false), "
            "set_config('role', 'api_admin', false), pg_advisory_lock(4242)",
            (json.dumps(claims("api_admin", "leaver")),),
        )
        with first.transaction():
            first.execute("DECLARE leftover CURSOR WITH HOLD FOR SELECT sub FROM identity.accounts")
        try:
            with second.transaction():
                seen = second.execute(
                    "SELECT pg_backend_pid(), current_setting('request.jwt.claims', true), "
                    "current_setting('pgplatform.note', true), current_setting('role'), "
                    "(SELECT count(*) FROM pg_cursors WHERE name = 'leftover'), "
                    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    " AND pid = pg_backend_pid())"
                ).fetchone()
            assert seen is not None
            assert seen[0] == pid, "the next client ran on the same server connection"
            assert json.loads(seen[1]) == claims("api_admin", "leaver")
            assert seen[2:] == ("left behind", "api_admin", 1, 1)
            # The next request replaces role and claims inside its own transaction.
            rows = request(
                second,
                "api_user",
                claims("api_user", "user-self"),
                "SELECT current_user, platform.jwt_sub(), pg_backend_pid(), "
                "(SELECT count(*) FROM identity.accounts)",
            )
            assert rows == [("api_user", "user-self", pid, 1)]
        finally:
            second.execute("DISCARD ALL")


# -- 5. beyond the API schemas ------------------------------------------------------------------
@pytest.mark.parametrize("database", ["postgres", "template1"])
def test_logins_cannot_reach_the_maintenance_databases(env: RunningStack, database: str) -> None:
    for login in ("postgrest", "pgbouncer_auth"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            env.cluster.connect_as(login, PASSWORDS[login], dbname=database)


@pytest.mark.parametrize(
    "query",
    ["SELECT lo_from_bytea(0, 'hidden')", "SELECT lo_create(0)", "SELECT lo_creat(-1)"],
)
def test_api_roles_cannot_create_large_objects(env: RunningStack, query: str) -> None:
    """Storage outside every table: no row level security, no audit."""
    with env.connect() as client:
        for role in ("api_editor", "api_admin", "api_service_cms"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                request(client, role, claims(role, "lo-maker"), query, rollback=True)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT last_value FROM content.articles_id_seq",
        "SELECT nextval('content.articles_id_seq')",
        "SELECT currval('content.articles_id_seq')",
        "SELECT setval('content.articles_id_seq', 1)",
    ],
)
def test_api_roles_cannot_read_sequence_positions(env: RunningStack, query: str) -> None:
    """A sequence's position is the table's row count; identity columns need no privilege."""
    with env.connect() as client:
        for role in ("api_user", "api_editor", "api_admin", "api_service_cms"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                request(client, role, claims(role, "counter"), query, rollback=True)
        # Inserting still works: the identity column takes its value without a privilege.
        [(new_id,)] = request(
            client,
            "api_editor",
            claims("api_editor", "counter"),
            "INSERT INTO content.articles (title) VALUES ('counted') RETURNING id",
            rollback=True,
        )
        assert new_id > 0
        [(visible,)] = request(
            client,
            "api_user",
            claims("api_user", "counter"),
            "SELECT last_value FROM pg_sequences WHERE sequencename = 'articles_id_seq'",
        )
        assert visible is None


# -- 6. RLS guard gaps ----------------------------------------------------------------------------
def test_a_table_created_with_its_schema_gets_rls(env: RunningStack, admin: Conn) -> None:
    """CREATE SCHEMA ... CREATE TABLE in a registered (exposed) schema."""
    admin.execute("INSERT INTO platform.exposed_schema (name) VALUES ('latecomer')")
    try:
        admin.execute(
            "CREATE SCHEMA latecomer AUTHORIZATION pgplatform_owner "
            "CREATE TABLE notes (id int, body text)"
        )
        assert admin.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE oid = 'latecomer.notes'::regclass"
        ).fetchone() == (True, True)
    finally:
        admin.execute("DROP SCHEMA IF EXISTS latecomer CASCADE")
        admin.execute("DELETE FROM platform.exposed_schema WHERE name = 'latecomer'")


def test_no_materialized_view_in_an_exposed_schema(env: RunningStack, admin: Conn) -> None:
    """It cannot have RLS, and default privileges would hand every reader all of its rows."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="materialized view"):
        as_owner(
            admin,
            "CREATE MATERIALIZED VIEW content.all_articles AS SELECT * FROM content.articles",
        )
    # Built elsewhere and moved in: refused too.
    admin.execute("CREATE SCHEMA IF NOT EXISTS scratch AUTHORIZATION pgplatform_owner")
    try:
        as_owner(admin, "CREATE MATERIALIZED VIEW scratch.snapshot AS SELECT 1 AS one")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="materialized view"):
            as_owner(admin, "ALTER MATERIALIZED VIEW scratch.snapshot SET SCHEMA content")
    finally:
        admin.execute("DROP SCHEMA scratch CASCADE")
    assert admin.execute(
        "SELECT count(*) FROM pg_matviews WHERE schemaname IN "
        "(SELECT name FROM platform.exposed_schema)"
    ).fetchone() == (0,)


# -- 7. policies that let a row change hands -----------------------------------------------------
def test_an_editor_cannot_hand_an_article_to_someone_else(env: RunningStack) -> None:
    with env.connect() as client:
        editor = claims("api_editor", "hand-over")
        [(article,)] = request(
            client,
            "api_editor",
            editor,
            "INSERT INTO content.articles (title) VALUES ('mine') RETURNING id",
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            request(
                client,
                "api_editor",
                editor,
                "UPDATE content.articles SET author_sub = 'someone-else' WHERE id = %s",
                (article,),
            )
        # Nor edit another author's article (USING), while editing its own still works.
        changed = request(
            client,
            "api_editor",
            editor,
            "UPDATE content.articles SET title = 'edited' WHERE author_sub <> 'hand-over' "
            "RETURNING id",
            rollback=True,
        )
        assert changed == []
        assert request(
            client,
            "api_editor",
            editor,
            "UPDATE content.articles SET title = 'edited' WHERE id = %s RETURNING author_sub",
            (article,),
        ) == [("hand-over",)]


# -- 8. search_path -------------------------------------------------------------------------------
def test_every_platform_function_pins_an_empty_search_path(admin: Conn) -> None:
    unpinned = admin.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname IN ('platform', 'audit') "
        "AND NOT coalesce('search_path=\"\"' = ANY (p.proconfig), false) ORDER BY 1"
    ).fetchall()
    assert unpinned == []
    [(functions,)] = admin.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname IN ('platform', 'audit')"
    ).fetchall()
    assert functions >= 9


def test_claim_helpers_ignore_a_hostile_search_path(env: RunningStack, admin: Conn) -> None:
    """A caller's search_path with a look-alike of a pg_catalog function changes nothing."""
    admin.execute("CREATE SCHEMA IF NOT EXISTS decoy")
    admin.execute(
        "CREATE OR REPLACE FUNCTION decoy.current_setting(text, boolean) RETURNS text "
        'LANGUAGE sql AS $$ SELECT \'{"sub": "decoy"}\'::text $$'
    )
    admin.execute("GRANT USAGE ON SCHEMA decoy TO PUBLIC")
    try:
        with env.connect() as client, client.transaction():
            client.execute("SET LOCAL search_path = decoy, pg_catalog")
            client.execute("SET LOCAL ROLE api_user")
            client.execute(
                "SELECT set_config('request.jwt.claims', %s, true)",
                (json.dumps(claims("api_user", "real")),),
            )
            assert client.execute("SELECT platform.jwt_sub()").fetchone() == ("real",)
    finally:
        admin.execute("DROP SCHEMA decoy CASCADE")


# -- the PostgreSQL 15 limit: SQL inside a request may switch to any API role --------------------
def test_no_dynamic_sql_in_exposed_functions(admin: Conn) -> None:
    """The authenticator is a member of every API role, so injected SQL could SET ROLE to any of
    them: functions in exposed schemas build no SQL at run time (docs/database.md)."""
    [(functions,)] = admin.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "JOIN platform.exposed_schema e ON e.name = n.nspname"
    ).fetchall()
    assert functions >= 1, "the example domains define functions"
    dynamic = admin.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "JOIN platform.exposed_schema e ON e.name = n.nspname "
        "WHERE p.prosrc ~* '\\mEXECUTE\\M' OR p.prosrc ~* '\\mquery_to_xml|dblink'"
    ).fetchall()
    assert dynamic == []
