"""The platform SQL baseline on a real PostgreSQL 15, and a real PgBouncer in front of it.

The rendered access plan (``010_access.sql`` of the offline render) runs first, then the
baseline (``stack_sql_files``), each twice; then the example domains' migrations
(``migrations/``) twice through the rendered migrations Job's script, which applies them as the
schema owner so that their grants come from the plan's default privileges.
Requests are made the way PostgREST makes them: as the authenticator, inside one transaction
that switches role, sets the claims and calls ``platform.pre_request()`` first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.render.baseline import render_exposed_schemas_sql, stack_sql_files
from components.render.migrations import MIGRATIONS_DIR
from components.render.pgbouncer import PgBouncerInput, render_pgbouncer_ini, render_userlist
from tests.integration.pg import PgCluster, running_cluster
from tests.integration.pgbouncer import PgBouncerProcess
from tools.migrate_db import apply_migrations, rendered_migrations

pytestmark = pytest.mark.integration

DOMAINS = ("identity", "content", "analytics")
DATABASE = "app"  # the database the access plan is rendered for
AUTHENTICATOR_PASSWORD = "authenticator-test-password"
LOOKUP_PASSWORD = "lookup-test-password"
EXPORTER_PASSWORD = "exporter-test-password"
API_ROLES = ("api_anonymous", "api_user", "api_editor", "api_admin", "api_service_cms")

Conn = psycopg.Connection[Any]


def bundle(build: Path) -> list[tuple[str, str]]:
    """The rendered access plan followed by the baseline, as the offline render applies it."""
    access = build / "sql" / "010_access.sql"
    return [(access.name, access.read_text()), *stack_sql_files(DOMAINS)]


def prepare_stack_database(cluster: PgCluster, dbname: str, build: Path) -> None:
    """Access plan + baseline twice, the domain migrations twice, passwords, a few rows."""
    files = bundle(build)
    cluster.apply_sql(dbname, files)
    cluster.apply_sql(dbname, files)
    apply_migrations(cluster, dbname, rendered_migrations(build))
    apply_migrations(cluster, dbname, rendered_migrations(build))
    with cluster.connect(dbname) as conn:
        conn.execute(f"ALTER ROLE postgrest PASSWORD '{AUTHENTICATOR_PASSWORD}'")
        conn.execute(f"ALTER ROLE pgbouncer_auth PASSWORD '{LOOKUP_PASSWORD}'")
        conn.execute(
            "INSERT INTO identity.accounts (sub, display_name) "
            "VALUES ('user-1', 'One'), ('user-2', 'Two')"
        )
        conn.execute(
            "INSERT INTO content.articles (author_sub, title, published) "
            "VALUES ('editor-1', 'public news', true), ('editor-1', 'draft', false)"
        )


def request(
    conn: Conn,
    role: str,
    claims: dict[str, Any],
    query: str,
    params: tuple[Any, ...] = (),
) -> list[tuple[Any, ...]]:
    """One PostgREST request: the per-request transaction around ``query``."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true), "
            "set_config('request.method', 'POST', true), "
            "set_config('request.path', '/rpc/test', true), "
            "set_config('request.headers', '{}', true)",
            (json.dumps(claims),),
        )
        conn.execute("SELECT platform.pre_request()")
        cursor = conn.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


def claims_for(role: str, sub: str | None = None) -> dict[str, Any]:
    return {"role": role, **({"sub": sub} if sub else {}), "aud": "pgplatform-test"}


@pytest.fixture(scope="module")
def staging(rendered_stack: Callable[[str], Path]) -> Iterator[PgCluster]:
    """A cluster of its own: roles are cluster-wide and staging's differ from prod's."""
    with running_cluster() as cluster:
        prepare_stack_database(
            cluster, cluster.create_database(DATABASE), rendered_stack("staging")
        )
        yield cluster


@pytest.fixture
def admin(staging: PgCluster) -> Iterator[Conn]:
    with staging.connect(DATABASE) as conn:
        yield conn


@pytest.fixture
def authenticator(staging: PgCluster) -> Iterator[Conn]:
    with staging.connect_as("postgrest", AUTHENTICATOR_PASSWORD, dbname=DATABASE) as conn:
        yield conn


def rls_flags(conn: Conn, table: str) -> tuple[bool, bool]:
    row = conn.execute(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
        (table,),
    ).fetchone()
    assert row is not None, table
    return bool(row[0]), bool(row[1])


# -- applying ------------------------------------------------------------------------------------
def test_second_apply_converges(admin: Conn) -> None:
    """Applied twice (in the fixture): one guard, one DDL audit pair, one pair of audit triggers,
    exact registry."""
    guards = admin.execute(
        "SELECT evtname, evtenabled, evttags FROM pg_event_trigger ORDER BY evtname"
    ).fetchall()
    assert guards == [
        ("platform_audit_ddl", "O", None),
        ("platform_audit_drop", "O", None),
        ("platform_rls_guard", "O", ["CREATE TABLE", "CREATE TABLE AS", "SELECT INTO",
                                     "ALTER TABLE", "CREATE SCHEMA", "CREATE MATERIALIZED VIEW",
                                     "ALTER MATERIALIZED VIEW"]),
    ]  # fmt: skip
    triggers = admin.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'content.articles'::regclass "
        "AND NOT tgisinternal ORDER BY tgname"
    ).fetchall()
    assert triggers == [("audit_record",), ("audit_record_truncate",)]
    registry = admin.execute("SELECT name FROM platform.exposed_schema ORDER BY name").fetchall()
    assert registry == [(name,) for name in sorted(DOMAINS)]


# -- claims and pre-request ----------------------------------------------------------------------
def test_claim_helpers(admin: Conn) -> None:
    assert admin.execute(
        "SELECT platform.jwt_claims(), platform.jwt_sub(), platform.jwt_role()"
    ).fetchone() == ({}, None, None)
    with admin.transaction():
        admin.execute("SELECT set_config('request.jwt.claims', '', true)")
        assert admin.execute("SELECT platform.jwt_claims()").fetchone() == ({},)
        admin.execute(
            "SELECT set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": "u-9", "role": "api_user", "email": "u9@example.com"}),),
        )
        assert admin.execute(
            "SELECT platform.jwt_sub(), platform.jwt_role(), platform.jwt_claims() ->> 'email'"
        ).fetchone() == ("u-9", "api_user", "u9@example.com")


def test_pre_request_accepts_api_roles_with_a_subject(authenticator: Conn) -> None:
    assert request(authenticator, "api_anonymous", {"role": "api_anonymous"}, "SELECT 1") == [(1,)]
    for role in ("api_user", "api_editor", "api_admin", "api_service_cms"):
        assert request(authenticator, role, claims_for(role, "s-1"), "SELECT current_user") == [
            (role,)
        ]


@pytest.mark.parametrize(
    ("role", "claims", "message"),
    [
        ("api_user", {"role": "api_user"}, "no sub claim"),
        ("api_admin", {"role": "api_admin", "sub": ""}, "no sub claim"),
        ("api_service_cms", {"role": "api_service_cms"}, "no sub claim"),
        # Not an API role: no EXECUTE on the hook, so the request stops there.
        ("postgrest", {"role": "postgrest", "sub": "x"}, "permission denied"),
    ],
)
def test_pre_request_refuses(
    authenticator: Conn, role: str, claims: dict[str, Any], message: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message):
        request(authenticator, role, claims, "SELECT 1")


# -- RLS guard -----------------------------------------------------------------------------------
def test_rls_guard_secures_tables_in_exposed_schemas_only(admin: Conn) -> None:
    with admin.transaction(force_rollback=True):
        admin.execute("CREATE SCHEMA scratch AUTHORIZATION pgplatform_owner")
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        admin.execute("CREATE TABLE content.created (id int)")
        admin.execute("CREATE TABLE content.created_as AS SELECT 1 AS id")
        admin.execute("SELECT 1 AS id INTO content.selected_into")
        admin.execute("CREATE TABLE content.parted (id int) PARTITION BY RANGE (id)")
        admin.execute(
            "CREATE TABLE content.parted_1 PARTITION OF content.parted FOR VALUES FROM (0) TO (9)"
        )
        for table in ("created", "created_as", "selected_into", "parted", "parted_1"):
            assert rls_flags(admin, f"content.{table}") == (True, True), table

        admin.execute("CREATE TABLE scratch.elsewhere (id int)")
        assert rls_flags(admin, "scratch.elsewhere") == (False, False)

        admin.execute("ALTER TABLE scratch.elsewhere SET SCHEMA content")
        assert rls_flags(admin, "content.elsewhere") == (True, True)

        admin.execute("ALTER TABLE content.created DISABLE ROW LEVEL SECURITY")
        assert rls_flags(admin, "content.created") == (True, True)
        admin.execute("ALTER TABLE content.created NO FORCE ROW LEVEL SECURITY")
        assert rls_flags(admin, "content.created") == (True, True)


def test_registering_a_schema_secures_its_existing_tables(admin: Conn) -> None:
    with admin.transaction(force_rollback=True):
        admin.execute("CREATE SCHEMA late AUTHORIZATION pgplatform_owner")
        admin.execute("CREATE TABLE late.before_registration (id int)")
        assert rls_flags(admin, "late.before_registration") == (False, False)

        admin.execute(render_exposed_schemas_sql([*DOMAINS, "late"]).encode())
        assert rls_flags(admin, "late.before_registration") == (True, True)

        admin.execute(render_exposed_schemas_sql(DOMAINS).encode())
        registry = admin.execute("SELECT name FROM platform.exposed_schema ORDER BY name")
        assert registry.fetchall() == [(name,) for name in sorted(DOMAINS)]
        assert rls_flags(admin, "late.before_registration") == (True, True)


def test_rls_is_forced_for_the_owner(admin: Conn) -> None:
    """The schema owner has no policy: with RLS forced it sees nothing, not everything."""
    with admin.transaction(force_rollback=True):
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        assert admin.execute("SELECT count(*) FROM content.articles").fetchone() == (0,)


# -- audit -----------------------------------------------------------------------------------------
def test_audit_records_subject_and_role_of_each_request(admin: Conn, authenticator: Conn) -> None:
    editor = claims_for("api_editor", "editor-7")
    [(article_id, txid)] = request(
        authenticator,
        "api_editor",
        editor,
        "INSERT INTO content.articles (title) VALUES ('audited') RETURNING id, txid_current()",
    )
    request(
        authenticator,
        "api_editor",
        editor,
        "UPDATE content.articles SET published = true WHERE id = %s",
        (article_id,),
    )
    deleted = request(
        authenticator,
        "api_admin",
        claims_for("api_admin", "admin-1"),
        "DELETE FROM content.articles WHERE id = %s RETURNING id",
        (article_id,),
    )
    assert deleted == [(article_id,)]

    rows = admin.execute(
        "SELECT op, sub, role, old_row ->> 'published', new_row ->> 'published', "
        "new_row ->> 'author_sub', txid FROM audit.log "
        "WHERE schema_name = 'content' AND table_name = 'articles' "
        "AND coalesce(new_row, old_row) ->> 'id' = %s ORDER BY id",
        (str(article_id),),
    ).fetchall()
    assert [row[:6] for row in rows] == [
        ("INSERT", "editor-7", "api_editor", None, "false", "editor-7"),
        ("UPDATE", "editor-7", "api_editor", "false", "true", "editor-7"),
        ("DELETE", "admin-1", "api_admin", "true", None, None),
    ]
    assert rows[0][6] == txid


def test_audit_covers_each_audited_table(admin: Conn, authenticator: Conn) -> None:
    request(
        authenticator,
        "api_editor",
        claims_for("api_editor", "editor-8"),
        "INSERT INTO identity.accounts (display_name) VALUES ('Eight')",
    )
    row = admin.execute(
        "SELECT op, sub, role, new_row ->> 'sub' FROM audit.log "
        "WHERE schema_name = 'identity' AND table_name = 'accounts' AND sub = 'editor-8'"
    ).fetchone()
    assert row == ("INSERT", "editor-8", "api_editor", "editor-8")


@pytest.mark.parametrize("role", [*API_ROLES, None])
def test_api_roles_cannot_read_or_write_the_audit_log(
    authenticator: Conn, role: str | None
) -> None:
    """None: the authenticator itself, without switching role."""
    statements = [
        "SELECT * FROM audit.log",
        "INSERT INTO audit.log (schema_name, table_name, op, role) "
        "VALUES ('a', 'b', 'INSERT', 'c')",
        "UPDATE audit.log SET sub = 'forged'",
        "DELETE FROM audit.log",
        "TRUNCATE audit.log",
    ]
    for statement in statements:
        with authenticator.transaction(force_rollback=True):
            if role is not None:
                authenticator.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                authenticator.execute(
                    "SELECT set_config('request.jwt.claims', %s, true)",
                    (json.dumps(claims_for(role, "attacker")),),
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                authenticator.execute(statement)


def test_no_role_but_the_owner_holds_privileges_on_the_audit_log(admin: Conn) -> None:
    """Besides the owner, only the audit writer (the trigger function's owner) may INSERT."""
    holders = admin.execute(
        "SELECT c.relname, a.grantee::regrole::text, a.privilege_type "
        "FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid IN ('audit.log'::regclass, 'audit.log_id_seq'::regclass) "
        "AND a.grantee <> c.relowner"
    ).fetchall()
    assert holders == [("log", "pgplatform_audit_writer", "INSERT")]


def test_schema_owner_cannot_remove_the_audit_log_or_the_guard(admin: Conn) -> None:
    """Migrations run as the domain schema owner; they must not be able to drop the controls."""
    for statement in (
        "DROP TABLE audit.log",
        "DROP FUNCTION platform.rls_guard() CASCADE",
        "DROP TABLE platform.exposed_schema CASCADE",
        "DROP FUNCTION audit.record() CASCADE",
    ):
        with admin.transaction(force_rollback=True):
            admin.execute("SET LOCAL ROLE pgplatform_owner")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute(statement)


# -- example domains: the policies through the API roles -----------------------------------------
def test_user_reads_only_published_articles(authenticator: Conn) -> None:
    titles = request(
        authenticator,
        "api_user",
        claims_for("api_user", "user-1"),
        "SELECT title FROM content.articles ORDER BY title",
    )
    assert ("public news",) in titles
    assert ("draft",) not in titles
    editor_titles = request(
        authenticator,
        "api_editor",
        claims_for("api_editor", "editor-1"),
        "SELECT title FROM content.articles ORDER BY title",
    )
    assert {("public news",), ("draft",)} <= set(editor_titles)


def test_editor_cannot_delete_and_writes_only_under_its_own_name(authenticator: Conn) -> None:
    editor = claims_for("api_editor", "editor-1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        request(authenticator, "api_editor", editor, "DELETE FROM content.articles")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        request(
            authenticator,
            "api_editor",
            editor,
            "INSERT INTO content.articles (author_sub, title) VALUES ('someone-else', 'x')",
        )


def test_accounts_are_private_to_their_subject(authenticator: Conn) -> None:
    user_1 = claims_for("api_user", "user-1")
    assert request(authenticator, "api_user", user_1, "SELECT sub FROM identity.accounts") == [
        ("user-1",)
    ]
    assert request(
        authenticator, "api_user", user_1, "SELECT sub, display_name FROM identity.me()"
    ) == [("user-1", "One")]
    assert (
        request(
            authenticator,
            "api_user",
            claims_for("api_user", "nobody"),
            "SELECT * FROM identity.me()",
        )
        == []
    )
    everyone = request(
        authenticator,
        "api_admin",
        claims_for("api_admin", "admin-1"),
        "SELECT sub FROM identity.accounts WHERE sub LIKE 'user-%' ORDER BY sub",
    )
    assert everyone == [("user-1",), ("user-2",)]


def test_analytics_view_applies_the_readers_policies(admin: Conn, authenticator: Conn) -> None:
    """Where the analytics domain lives in the application database (prod), its view reads
    content.articles with the caller's policies. Staging serves it from the CDC copies, so its
    migration is applied here by hand, as the schema owner, the way the runner does."""
    view = MIGRATIONS_DIR / "analytics" / "0001_article_stats.sql"
    with admin.transaction():
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        admin.execute(view.read_text())
    query = "SELECT published FROM analytics.article_stats ORDER BY published"
    assert request(authenticator, "api_user", claims_for("api_user", "user-1"), query) == [(True,)]
    assert request(authenticator, "api_editor", claims_for("api_editor", "e"), query) == [
        (False,),
        (True,),
    ]


# -- PgBouncer auth lookup -------------------------------------------------------------------------
def test_auth_lookup_serves_only_ordinary_login_roles(admin: Conn) -> None:
    lookup = "SELECT usename, passwd FROM platform.pgbouncer_get_auth(%s)"
    [(name, verifier)] = admin.execute(lookup, ("postgrest",)).fetchall()
    assert name == "postgrest"
    assert verifier.startswith("SCRAM-SHA-256$")
    for role in ("postgres", "api_user", "no_such_role"):
        assert admin.execute(lookup, (role,)).fetchall() == [], role


def test_only_the_lookup_role_may_call_the_lookup(authenticator: Conn) -> None:
    for role in API_ROLES:
        with authenticator.transaction(force_rollback=True):
            authenticator.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                authenticator.execute("SELECT * FROM platform.pgbouncer_get_auth('postgrest')")


# -- through a real PgBouncer, against the TLS-only prod-like cluster ----------------------------
@pytest.fixture(scope="module")
def prod_tls() -> Iterator[PgCluster]:
    """prod's roles on a cluster that refuses every TCP login without TLS."""
    with running_cluster(tls_only=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pgbouncer(
    prod_tls: PgCluster, rendered_stack: Callable[[str], Path]
) -> Iterator[PgBouncerProcess]:
    inp = PgBouncerInput(
        database=DATABASE,
        rw_host="pgplatform-db-rw.pgplatform.svc.cluster.local",
        ro_host="pgplatform-db-ro.pgplatform.svc.cluster.local",
        server_tls_ca_file="/etc/pgbouncer/server-ca/ca.crt",
    )
    dbname = prod_tls.create_database(inp.database)
    prepare_stack_database(prod_tls, dbname, rendered_stack("prod"))
    userlist = render_userlist(
        {"pgbouncer_auth": LOOKUP_PASSWORD, "pgbouncer_exporter": EXPORTER_PASSWORD}
    )
    with PgBouncerProcess(
        render_pgbouncer_ini(inp),
        userlist,
        server_host=prod_tls.host,
        server_port=prod_tls.port,
        files={"server_tls_ca_file": prod_tls.ca_file},
    ) as process:
        yield process


def test_postgrest_request_through_pgbouncer(
    pgbouncer: PgBouncerProcess, prod_tls: PgCluster
) -> None:
    # options is sent by some clients; the rendered ini drops it instead of refusing the login.
    with pgbouncer.connect(
        "postgrest", AUTHENTICATOR_PASSWORD, "app_rw", options="-c search_path=public"
    ) as conn:
        [(article_id,)] = request(
            conn,
            "api_editor",
            claims_for("api_editor", "editor-pooled"),
            "INSERT INTO content.articles (title) VALUES ('pooled') RETURNING id",
        )
        # PgBouncer -> PostgreSQL is TLS (verify-full against the cluster's CA).
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)
        # Nothing of the request survives its transaction on the shared server connection.
        assert conn.execute(
            "SELECT current_user, current_setting('request.jwt.claims', true)"
        ).fetchone() in {("postgrest", ""), ("postgrest", None)}
    with pgbouncer.connect("postgrest", AUTHENTICATOR_PASSWORD, "app_ro") as conn:
        assert request(
            conn, "api_user", claims_for("api_user", "user-1"), "SELECT sub FROM identity.me()"
        ) == [("user-1",)]
    with prod_tls.connect(DATABASE) as admin:
        assert admin.execute(
            "SELECT sub, role FROM audit.log WHERE new_row ->> 'id' = %s",
            (str(article_id),),
        ).fetchone() == ("editor-pooled", "api_editor")


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("postgrest", "wrong-password"),
        ("postgres", None),  # right password, but superusers never log in through the pooler
        ("api_user", "anything"),  # NOLOGIN role
    ],
)
def test_pgbouncer_refuses(
    pgbouncer: PgBouncerProcess, prod_tls: PgCluster, user: str, password: str | None
) -> None:
    with pytest.raises(psycopg.OperationalError):
        pgbouncer.connect(user, password or prod_tls.superuser_password, "app_rw")


def test_exporter_reads_stats_but_cannot_administer(pgbouncer: PgBouncerProcess) -> None:
    with pgbouncer.connect("pgbouncer_exporter", EXPORTER_PASSWORD, "pgbouncer") as conn:
        conn.execute("SHOW POOLS")
        config = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
        assert config["pool_mode"] == "transaction"
        assert config["auth_type"] == "scram-sha-256"
        with pytest.raises(psycopg.Error, match="admin access needed"):
            conn.execute("PAUSE")
