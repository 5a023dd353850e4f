"""The security model end to end, on real PostgreSQL 15 and a real PgBouncer, for both stacks.

Each stack runs from its offline render (``tests/integration/pooler.py``): the SQL bundle of
``build/<stack>/sql/`` and the example domains on a TLS-only cluster, PgBouncer started with the
rendered ``pgbouncer.ini`` and a userlist written by the rendered init container script. Every
request goes through PgBouncer as the authenticator and is PostgREST's per-request transaction
(DESIGN.md §2): ``SET LOCAL ROLE``, the claims and ``request.method/path/headers`` as
transaction-local settings, ``platform.pre_request()``, the query.

Not provable here (no cluster): that the NetworkPolicy really isolates PgBouncer, that the
Secret reaches the pod through External Secrets, CloudNativePG's certificates and bootstrap, and
``sslmode=require`` (staging) against an active man in the middle. What is proven: the same
config files, SQL and scripts, against the same server rules (hostssl only, SCRAM).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

from tests.conftest import STACKS
from tests.integration.pg import connect
from tests.integration.pooler import (
    PASSWORDS,
    RunningStack,
    container,
    rendered_deployment,
    running_cluster,
    running_stack,
    start_pgbouncer,
)

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
DENIED: Final = "denied"
OTHER: Final = "other-person"
LEAK_CLIENTS: Final = 40
LEAK_REQUESTS: Final = 15
# Who makes the request: API role and the subject of its token ("" = anonymous, no sub).
CALLERS: Final = {
    "anonymous": ("api_anonymous", ""),
    "user": ("api_user", "user-self"),
    "editor": ("api_editor", "editor-self"),
    "admin": ("api_admin", "admin-self"),
    "service": ("api_service_cms", "cms-self"),
}


@pytest.fixture(scope="module", params=STACKS)
def env(
    request: pytest.FixtureRequest, rendered_stack: Callable[[str], Path]
) -> Iterator[RunningStack]:
    stack = str(request.param)
    with running_stack(stack, rendered_stack(stack)) as running:
        with running.cluster.connect(running.database) as admin:
            subs = [sub for _, sub in CALLERS.values() if sub] + [OTHER]
            subs += [f"leak-{i}" for i in range(LEAK_CLIENTS)]
            with admin.cursor() as cur:
                cur.executemany(
                    "INSERT INTO identity.accounts (sub, display_name) VALUES (%s, %s)",
                    [(sub, sub.title()) for sub in subs],
                )
            admin.execute(
                "INSERT INTO content.articles (author_sub, title, published) "
                "VALUES ('cms-self', 'cms article', true), (%s, 'other article', true)",
                (OTHER,),
            )
        yield running


@pytest.fixture
def client(env: RunningStack) -> Iterator[Conn]:
    with env.connect() as conn:
        yield conn


def request(
    conn: Conn,
    role: str,
    claims: dict[str, Any],
    query: str,
    params: tuple[Any, ...] = (),
    *,
    headers: dict[str, str] | None = None,
    rollback: bool = False,
    pre_request: bool = True,
    app_settings: dict[str, str] | None = None,
) -> list[tuple[Any, ...]]:
    """PostgREST's transaction for one request; ``rollback`` as with ``Prefer: tx=rollback``.

    ``app_settings``: the ``app.settings.*`` of the domain's postgrest.conf, which PostgREST
    sets transaction-locally with the claims.
    """
    with conn.transaction(force_rollback=rollback):
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true), "
            "set_config('request.method', 'POST', true), "
            "set_config('request.path', '/rpc/case', true), "
            "set_config('request.headers', %s, true)",
            (json.dumps(claims), json.dumps(headers or {"user-agent": "pgplatform-tests"})),
        )
        for key, value in (app_settings or {}).items():
            conn.execute("SELECT set_config(%s, %s, true)", (key, value))
        if pre_request:
            conn.execute("SELECT platform.pre_request()")
        cursor = conn.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


def claims(role: str, sub: str) -> dict[str, Any]:
    return {"role": role, "aud": "pgplatform", **({"sub": sub} if sub else {})}


# -- the case table ------------------------------------------------------------------------------
# Humans work on identity.accounts (own row: sub = token subject); the machine client on
# content.articles (own row: author_sub = its subject,
# migrations/content/0002_cms_client_policy.sql).
_ACCOUNTS: Final = {
    "select": "SELECT sub FROM identity.accounts WHERE sub = %s",
    "insert own": "INSERT INTO identity.accounts (display_name) VALUES ('New') RETURNING sub",
    "insert other": "INSERT INTO identity.accounts (sub, display_name) "
    "VALUES ('someone-new', 'New') RETURNING sub",
    "update": "UPDATE identity.accounts SET display_name = 'Changed' WHERE sub = %s RETURNING sub",
    "delete": "DELETE FROM identity.accounts WHERE sub = %s RETURNING sub",
}
_ARTICLES: Final = {
    "select": "SELECT author_sub FROM content.articles WHERE author_sub = %s",
    "insert own": "INSERT INTO content.articles (title) VALUES ('new') RETURNING author_sub",
    "insert other": "INSERT INTO content.articles (author_sub, title) "
    "VALUES ('someone-new', 'new') RETURNING author_sub",
    "update": "UPDATE content.articles SET title = 'changed' WHERE author_sub = %s "
    "RETURNING author_sub",
    "delete": "DELETE FROM content.articles WHERE author_sub = %s RETURNING author_sub",
}
# (caller, operation, whose row) -> rows seen or changed, or DENIED (SQLSTATE 42501).
EXPECTED: Final[dict[tuple[str, str, str], int | str]] = {
    **{("anonymous", op, "other"): DENIED for op in ("insert", "update", "delete")},
    ("anonymous", "select", "other"): 0,
    **{
        ("user", op, whose): DENIED
        for op in ("insert", "update", "delete")
        for whose in ("own", "other")
    },
    ("user", "select", "own"): 1,
    ("user", "select", "other"): 0,
    **{
        (who, op, "own"): 1
        for who in ("editor", "service")
        for op in ("select", "insert", "update")
    },
    **{(who, "select", "other"): 0 for who in ("editor", "service")},
    **{(who, "insert", "other"): DENIED for who in ("editor", "service")},
    **{(who, "update", "other"): 0 for who in ("editor", "service")},
    **{
        (who, "delete", whose): DENIED
        for who in ("editor", "service")
        for whose in ("own", "other")
    },
    **{
        ("admin", op, whose): 1
        for op in ("select", "insert", "update", "delete")
        for whose in ("own", "other")
    },
}


@pytest.mark.parametrize(
    ("who", "op", "whose"), sorted(EXPECTED), ids=["-".join(key) for key in sorted(EXPECTED)]
)
def test_case_table(client: Conn, env: RunningStack, who: str, op: str, whose: str) -> None:
    role, sub = CALLERS[who]
    statements = _ARTICLES if who == "service" else _ACCOUNTS
    params: tuple[str, ...] = ()
    if op == "insert":
        # A subject without an account yet (accounts are one per subject).
        sub = f"{who}-new" if sub else sub
        query = statements[f"insert {whose}"]
    else:
        query, params = statements[op], (sub if whose == "own" else OTHER,)
    expected = EXPECTED[(who, op, whose)]

    if who == "anonymous" and env.stack == "prod":
        # No anonymous path at all: the role does not exist, so no request can switch to it.
        with pytest.raises(psycopg.Error, match='role "api_anonymous" does not exist'):
            request(client, role, claims(role, sub), query, params, rollback=True)
        return
    if expected == DENIED:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            request(client, role, claims(role, sub), query, params, rollback=True)
        return
    rows = request(client, role, claims(role, sub), query, params, rollback=True)
    assert len(rows) == expected, rows
    if op == "insert" and whose == "own":
        assert rows == [(sub,)], "the new row belongs to the token's subject"


def test_service_reaches_only_its_schemas(client: Conn) -> None:
    role, sub = CALLERS["service"]
    for query in (_ACCOUNTS["select"], _ACCOUNTS["update"]):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema identity"):
            request(client, role, claims(role, sub), query, (sub,), rollback=True)


def test_ro_pool_applies_the_same_policies(env: RunningStack) -> None:
    with env.connect(env.ro_pool) as conn:
        role, sub = CALLERS["user"]
        assert request(conn, role, claims(role, sub), "SELECT sub FROM identity.accounts") == [
            (sub,)
        ]


# -- roles, subjects and claim values ------------------------------------------------------------
def test_role_claim_must_name_a_granted_api_role(client: Conn, env: RunningStack) -> None:
    for role in ("postgres", "pgplatform_owner", "pgplatform_admin", "pgbouncer_auth"):
        with pytest.raises(psycopg.Error) as caught:
            request(client, role, claims(role, "x"), "SELECT 1", rollback=True)
        # Permission denied where the role exists, "does not exist" where it does not.
        assert caught.value.sqlstate in {"42501", "22023"}, caught.value
    with env.cluster.connect(env.database) as admin:
        graphql = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgraphile'").fetchone()
    assert (graphql is not None) is (env.stack == "staging")
    # A login that is granted no API role (the pooler's lookup role) cannot become api_admin.
    with (
        env.connect(user="pgbouncer_auth") as lookup,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
    ):
        request(lookup, "api_admin", claims("api_admin", "x"), "SELECT 1", rollback=True)


def test_missing_sub_sees_nothing(client: Conn) -> None:
    no_sub = claims("api_user", "")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no sub claim"):
        request(client, "api_user", no_sub, "SELECT 1", rollback=True)
    # Even without the hook (defence in depth), policies compare with NULL and match nothing.
    for role in ("api_user", "api_editor", "api_service_cms"):
        table = "content.articles" if role == "api_service_cms" else "identity.accounts"
        rows = request(client, role, claims(role, ""), f"SELECT * FROM {table}", pre_request=False)
        assert rows == [], role
    changed = request(
        client,
        "api_editor",
        claims("api_editor", ""),
        "UPDATE identity.accounts SET display_name = 'x' RETURNING sub",
        pre_request=False,
        rollback=True,
    )
    assert changed == []


HOSTILE: Final = (
    "x' OR '1'='1",
    "'; DROP TABLE identity.accounts; --",
    '"quoted" \\ backslash',
    "user-self' --",
    "$$; SELECT pg_sleep(10); $$",
    "\u202euser-self",
    "line\nbreak",
)


@pytest.mark.parametrize("value", HOSTILE)
def test_claim_values_are_inert(client: Conn, env: RunningStack, value: str) -> None:
    rows = request(
        client,
        "api_user",
        {**claims("api_user", value), "email": value, "role_hint": value},
        "SELECT sub FROM identity.accounts",
        headers={"x-forwarded-for": value, "user-agent": value},
    )
    assert rows == []
    # As a role name it is one quoted identifier, never SQL.
    with pytest.raises(psycopg.Error, match="does not exist"):
        request(client, value, claims("api_user", "user-self"), "SELECT 1", rollback=True)
    # Written data keeps the value verbatim, and the audit log records it as the subject.
    [(txid,)] = request(
        client,
        "api_editor",
        claims("api_editor", value),
        "INSERT INTO content.articles (title) VALUES ('hostile') RETURNING txid_current()",
        rollback=True,
    )
    assert txid
    with env.cluster.connect(env.database) as admin:
        assert admin.execute(
            "SELECT count(*) FROM identity.accounts WHERE sub = 'user-self'"
        ).fetchone() == (1,)


def test_prod_has_no_anonymous_path(env: RunningStack) -> None:
    with env.cluster.connect(env.database) as admin:
        anonymous = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'api_anonymous'")
        assert (anonymous.fetchone() is not None) is (env.stack == "staging")
    confs = sorted((env.build / "files").glob("*/postgrest.conf"))
    assert confs, "the rendered APIs' postgrest.conf files"
    for conf in confs:
        settings = [line for line in conf.read_text().splitlines() if not line.startswith("#")]
        anon = any(line.startswith("db-anon-role") for line in settings)
        assert anon is (env.stack == "staging"), conf
    # Without switching role the authenticator itself reads nothing and cannot pass the hook.
    with env.connect() as conn:
        for query in ("SELECT * FROM identity.accounts", "SELECT platform.pre_request()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(query)


# -- transaction pooling -------------------------------------------------------------------------
def test_claims_never_leak_between_pooled_requests(env: RunningStack) -> None:
    """Many clients, few server connections: each request sees a clean session and its rows."""
    served: dict[int, set[str]] = defaultdict(set)
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(LEAK_CLIENTS)

    def client_loop(index: int) -> None:
        sub = f"leak-{index}"
        try:
            with env.connect() as conn:
                start.wait(timeout=30)
                for _ in range(LEAK_REQUESTS):
                    with conn.transaction():
                        before = conn.execute(
                            "SELECT current_setting('request.jwt.claims', true), "
                            "current_setting('role'), current_user, pg_backend_pid()"
                        ).fetchone()
                        assert before is not None
                        claims_before, role_before, user_before, pid = before
                        if claims_before or role_before != "none" or user_before != "postgrest":
                            raise AssertionError(f"{sub} inherited {before}")
                        conn.execute("SET LOCAL ROLE api_user")
                        conn.execute(
                            "SELECT set_config('request.jwt.claims', %s, true)",
                            (json.dumps(claims("api_user", sub)),),
                        )
                        conn.execute("SELECT platform.pre_request()")
                        rows = conn.execute("SELECT sub FROM identity.accounts").fetchall()
                        if rows != [(sub,)]:
                            raise AssertionError(f"{sub} saw {rows}")
                    with lock:
                        served[int(pid)].add(sub)
        except Exception as error:  # collected and asserted below
            with lock:
                errors.append(f"{sub}: {error!r}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(LEAK_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    pool = env.ini["pgbouncer"]
    limit = int(pool["default_pool_size"]) + int(pool["reserve_pool_size"])
    assert len(served) <= limit, "server connections beyond the pool: the budget would be wrong"
    assert len(served) < LEAK_CLIENTS, "clients shared server connections"
    assert max(len(subs) for subs in served.values()) > 1, "a server connection served many subs"


def test_login_burst_uses_the_capped_lookup_connections(env: RunningStack) -> None:
    """Fresh logins to both pools at once: all succeed on the lookup role's few connections."""
    errors: list[str] = []

    def login(index: int) -> None:
        try:
            with env.connect(env.rw_pool if index % 2 else env.ro_pool) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=login, args=(i,)) for i in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    cap = env.ini["users"]["pgbouncer_auth"]
    assert cap.startswith("max_user_connections=")
    with env.cluster.connect(env.database) as admin:
        [(lookups,)] = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgbouncer_auth'"
        ).fetchall()
    assert 1 <= lookups <= int(cap.split("=", 1)[1])


# -- audit ---------------------------------------------------------------------------------------
def test_every_write_is_audited_with_its_subject(env: RunningStack, client: Conn) -> None:
    writes = [
        ("api_editor", "audit-editor", "INSERT INTO content.articles (title) VALUES ('a') "
         "RETURNING txid_current()", "INSERT"),
        ("api_editor", "audit-editor", "UPDATE content.articles SET title = 'b' "
         "WHERE title = 'a' RETURNING txid_current()", "UPDATE"),
        ("api_admin", "audit-admin", "DELETE FROM content.articles WHERE title = 'b' "
         "RETURNING txid_current()", "DELETE"),
        ("api_service_cms", "cms-self", "UPDATE content.articles SET body = 'edited' "
         "WHERE author_sub = 'cms-self' RETURNING txid_current()", "UPDATE"),
        ("api_admin", "audit-admin", "INSERT INTO identity.accounts (sub, display_name) "
         "VALUES ('audited', 'A') RETURNING txid_current()", "INSERT"),
    ]  # fmt: skip
    done = []
    for role, sub, query, op in writes:
        [(txid,)] = request(client, role, claims(role, sub), query)
        done.append((int(txid), op, sub, role))
    with env.cluster.connect(env.database) as admin:
        for txid, op, sub, role in done:
            rows = admin.execute(
                "SELECT op, sub, role FROM audit.log WHERE txid = %s", (txid,)
            ).fetchall()
            assert rows == [(op, sub, role)], (txid, rows)


# -- authentication and TLS ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("postgrest", "wrong-password"),
        ("pgbouncer_exporter", "wrong-password"),
        ("postgres", None),  # the right password, but superusers never pass the pooler
        ("api_user", "anything"),  # NOLOGIN
    ],
)
def test_pgbouncer_refuses(env: RunningStack, user: str, password: str | None) -> None:
    secret = password or env.cluster.superuser_password
    with pytest.raises(psycopg.OperationalError):
        env.pgbouncer.connect(user, secret, env.rw_pool)


def test_exporter_reads_stats_through_the_socket(env: RunningStack) -> None:
    """As the rendered exporter connects: the stats user, the unix socket, no TLS."""
    exporter = container(rendered_deployment(env.build)["spec"]["template"]["spec"], "exporter")
    [argument] = [a for a in exporter["args"] if a.startswith("--pgBouncer.connectionString=")]
    assert f"host={env.ini['pgbouncer']['unix_socket_dir']}" in argument
    conn = connect(
        host=str(env.pgbouncer.socket_dir),
        port=env.pgbouncer.port,
        user="pgbouncer_exporter",
        password=PASSWORDS["pgbouncer_exporter"],
        dbname="pgbouncer",
    )
    with env.connect() as client, conn:
        client.execute("SELECT 1")
        conn.prepare_threshold = None
        pools = {row[0] for row in conn.execute("SHOW POOLS").fetchall()}
        assert env.rw_pool in pools
        conn.execute("SHOW STATS_TOTALS")
        with pytest.raises(psycopg.Error, match="admin access needed"):
            conn.execute("PAUSE")


def test_database_is_reached_only_over_tls(env: RunningStack, client: Conn) -> None:
    # Through the pooler: the server connection is TLS.
    assert client.execute(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ).fetchone() == (True,)
    # Directly: without TLS the server refuses the authenticator outright.
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        env.cluster.connect_as(
            "postgrest", PASSWORDS["postgrest"], dbname=env.database, sslmode="disable"
        )
    with env.cluster.connect_as("postgrest", PASSWORDS["postgrest"], dbname=env.database) as ok:
        assert ok.execute("SELECT current_user").fetchone() == ("postgrest",)


def test_pgbouncer_verifies_the_server_certificate(env: RunningStack) -> None:
    """verify-full (prod): a server whose certificate another CA signed is never used."""
    mode = env.ini["pgbouncer"]["server_tls_sslmode"]
    if env.stack == "staging":
        assert mode == "require"  # encrypts, but trusts any certificate: see the module doc
        return
    assert mode == "verify-full"
    with (
        running_cluster(tls=True) as stranger,
        start_pgbouncer(env.build, env.cluster, ca_file=stranger.ca_file) as pgbouncer,
    ):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                host=pgbouncer.host,
                port=pgbouncer.port,
                user="postgrest",
                password=PASSWORDS["postgrest"],
                dbname=env.rw_pool,
                connect_timeout=2,
            )
        log = pgbouncer.log()
        assert "TLS handshake error" in log, log
        assert "login attempt" not in log
