"""Masking policies on real PostgreSQL 15 through PgBouncer, in PostgREST's per-request transaction.

The staging stack masks ``identity.accounts.email`` (Pulumi.staging.yaml): ``api_user`` reads
``partial(1,"***",0)``, ``api_editor`` reads ``hash``, ``api_admin`` reads the address. The
database is the rendered bundle plus the domain migrations through the rendered migrations Job's
script, which ends with ``platform.apply_masking()`` (``tests/integration/pooler.py``). Each
request is the transaction of ``test_security_model.request``: ``SET LOCAL ROLE``, claims,
``platform.pre_request()``, query.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from tests.integration.pooler import RunningStack, running_stack
from tests.integration.test_security_model import claims, request

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
# subject -> e-mail; the callers' own accounts and two others.
ACCOUNTS: Final = {
    "mask-user": "alice@example.com",
    "mask-editor": "bob@example.com",
    "mask-admin": "carol@example.com",
    "mask-other": "dave@example.org",
    "mask-more": "erin@example.net",
}
USER: Final = ("api_user", "mask-user")
EDITOR: Final = ("api_editor", "mask-editor")
ADMIN: Final = ("api_admin", "mask-admin")


@pytest.fixture(scope="module")
def env(rendered_stack: Callable[[str], Path]) -> Iterator[RunningStack]:
    with running_stack("staging", rendered_stack("staging")) as running:
        with running.cluster.connect(running.database) as admin, admin.cursor() as cur:
            cur.executemany(
                "INSERT INTO identity.accounts (sub, display_name, email) VALUES (%s, %s, %s)",
                [(sub, sub.title(), email) for sub, email in ACCOUNTS.items()],
            )
        yield running


@pytest.fixture
def client(env: RunningStack) -> Iterator[Conn]:
    with env.connect() as conn:
        yield conn


@pytest.fixture
def admin(env: RunningStack) -> Iterator[Conn]:
    with env.cluster.connect(env.database) as conn:
        yield conn


def ask(conn: Conn, caller: tuple[str, str], query: str, *params: Any, **kw: Any) -> list[Any]:
    role, sub = caller
    return request(conn, role, claims(role, sub), query, params, **kw)


def first(conn: Conn, query: str) -> tuple[Any, ...]:
    """The first row of a query run directly (not through PgBouncer)."""
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return tuple(row)


def hmac_of(admin: Conn, value: str) -> str:
    """The expected pseudonym: HMAC-SHA256 with the key recovered from its stored inner pad."""
    inner_pad = bytes(first(admin, "SELECT inner_pad FROM platform.masking_key")[0])
    key = bytes(b ^ 0x36 for b in inner_pad)
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_postgrest_sees_a_writable_view_under_the_table_name(admin: Conn) -> None:
    """PostgREST's schema cache reads pg_class and pg_relation_is_updatable for the schema."""
    kind, options, updatable = first(
        admin,
        "SELECT c.relkind::text, c.reloptions, pg_relation_is_updatable(c.oid, false) "
        "FROM pg_class c WHERE c.oid = 'identity.accounts'::regclass",
    )
    assert kind == "v"
    assert options == ["security_barrier=true"]
    assert updatable == 4 | 8 | 16, "INSERT, UPDATE and DELETE through the INSTEAD OF trigger"
    base = first(
        admin,
        "SELECT c.relkind::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
        "WHERE c.oid = 'identity_private.accounts'::regclass",
    )
    assert base == ("r", True, True), "the table keeps its RLS where it moved"
    # PostgREST finds a view's keys through its rule's target list (resorigtbl/resorigcol).
    base_oid, rule = first(
        admin,
        "SELECT 'identity_private.accounts'::regclass::oid, r.ev_action::text FROM pg_rewrite r "
        "WHERE r.ev_class = 'identity.accounts'::regclass",
    )
    assert f":resname id :ressortgroupref 0 :resorigtbl {base_oid} :resorigcol 1" in rule
    exposed = admin.execute("SELECT name::text FROM platform.exposed_schema").fetchall()
    assert ("identity_private",) not in exposed


def test_masked_roles_read_masked_values_and_others_raw(client: Conn, admin: Conn) -> None:
    query = "SELECT sub, email FROM identity.accounts ORDER BY sub"
    assert ask(client, USER, query) == [("mask-user", "a***")]
    assert ask(client, EDITOR, query) == [("mask-editor", hmac_of(admin, "bob@example.com"))]
    seen = dict(ask(client, ADMIN, query))
    assert {sub: seen[sub] for sub in ACCOUNTS} == ACCOUNTS


def test_hash_is_keyed_so_a_dictionary_does_not_reverse_it(client: Conn) -> None:
    [(pseudonym,)] = ask(client, EDITOR, "SELECT email FROM identity.accounts")
    assert len(pseudonym) == 64
    assert pseudonym != hashlib.sha256(b"bob@example.com").hexdigest()
    assert pseudonym != hashlib.md5(b"bob@example.com").hexdigest()  # noqa: S324 - the dictionary


def test_the_caller_cannot_read_the_key(client: Conn) -> None:
    for caller in (USER, EDITOR):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ask(client, caller, "SELECT inner_pad FROM platform.masking_key")


def test_rows_and_groups_elevation_go_through_the_same_masks(client: Conn) -> None:
    """A role-less token with groups (pre_request's SET LOCAL ROLE) is masked as its final role."""
    token = {"role": "api_anonymous", "aud": "pgplatform-staging", "sub": "mask-user",
             "groups": ["readers"]}  # fmt: skip
    rows = request(
        client, "api_anonymous", token, "SELECT current_user::text, email FROM identity.accounts"
    )
    assert rows == [("api_user", "a***")]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT email FROM identity_private.accounts",
        "SELECT * FROM identity_private.accounts",
        "SELECT a FROM identity_private.accounts a",
        "SELECT sub FROM identity_private.accounts WHERE email LIKE 'a%%'",
        "SELECT sub FROM identity_private.accounts ORDER BY email",
        "UPDATE identity_private.accounts SET display_name = display_name "
        "WHERE email = 'alice@example.com' RETURNING sub",
        "COPY (SELECT email FROM identity_private.accounts) TO STDOUT",
    ],
)
def test_the_raw_column_is_unreadable_to_masked_roles(client: Conn, query: str) -> None:
    for caller in (USER, EDITOR):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ask(client, caller, query, rollback=True)


def test_the_table_serves_unmasked_columns_with_the_callers_rls(client: Conn) -> None:
    """Column grants: the table's other columns stay readable, for the caller's rows only."""
    assert ask(client, USER, "SELECT sub FROM identity_private.accounts") == [("mask-user",)]
    rows = ask(client, ADMIN, "SELECT email FROM identity_private.accounts WHERE sub = 'mask-more'")
    assert rows == [("erin@example.net",)]


def test_statistics_do_not_show_the_masked_column(client: Conn, admin: Conn) -> None:
    admin.execute("ANALYZE identity_private.accounts")
    query = (
        "SELECT attname::text, most_common_vals::text, histogram_bounds::text FROM pg_stats "
        "WHERE schemaname LIKE 'identity%%' AND tablename = 'accounts' AND attname = 'email'"
    )
    assert ask(client, USER, query) == []
    assert ask(client, EDITOR, query) == []


def test_rpc_returns_masked_values(client: Conn, admin: Conn) -> None:
    """identity.me() (SECURITY INVOKER) masks; so does code running with another role's rights:
    a SECURITY DEFINER function of api_admin (all rows by its policy) masks by the requesting
    role, and one of the table owner still sees no rows (FORCE RLS, as before masking)."""
    assert ask(client, USER, "SELECT sub, email FROM identity.me()") == [("mask-user", "a***")]
    body = (
        "RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' "
        "AS $$ SELECT a.email FROM identity.accounts a ORDER BY a.sub $$"
    )
    admin.execute(f"CREATE FUNCTION identity.admin_emails() {body}")
    admin.execute(f"CREATE FUNCTION identity.owner_emails() {body}")
    admin.execute("ALTER FUNCTION identity.admin_emails() OWNER TO api_admin")
    admin.execute("ALTER FUNCTION identity.owner_emails() OWNER TO pgplatform_owner")
    admin.execute(
        "GRANT EXECUTE ON FUNCTION identity.admin_emails(), identity.owner_emails() TO api_user"
    )
    try:
        emails = [e for (e,) in ask(client, USER, "SELECT * FROM identity.admin_emails()")]
        assert "a***" in emails
        assert not set(emails) & set(ACCOUNTS.values()), emails
        assert ask(client, USER, "SELECT * FROM identity.owner_emails()") == []
    finally:
        admin.execute("DROP FUNCTION identity.admin_emails(), identity.owner_emails()")


def test_filters_compare_the_masked_value(client: Conn, admin: Conn) -> None:
    """email=eq.<address> as a masked role filters on the masked value: no raw oracle."""
    count = "SELECT count(*) FROM identity.accounts WHERE email = %s"
    assert ask(client, USER, count, "alice@example.com") == [(0,)]
    assert ask(client, USER, count, "a***") == [(1,)]
    assert ask(client, USER, "SELECT count(*) FROM identity.accounts WHERE email LIKE 'al%%'") == [
        (0,)
    ]
    assert ask(client, EDITOR, count, "bob@example.com") == [(0,)]
    assert ask(client, EDITOR, count, hmac_of(admin, "bob@example.com")) == [(1,)]
    assert ask(client, ADMIN, count, "bob@example.com") == [(1,)]


def test_leaky_predicates_see_only_visible_rows_and_masked_values(client: Conn) -> None:
    """A non-leakproof function in WHERE runs above the security barrier: on the caller's rows,
    after masking. Recorded through set_config, an error message, and an ordering."""
    seen = ask(
        client,
        USER,
        "SELECT current_setting('pgplatform.seen') FROM identity.accounts "
        "WHERE set_config('pgplatform.seen', coalesce(current_setting('pgplatform.seen', true), '')"
        " || '|' || sub || '=' || email, true) IS NOT NULL",
    )
    assert seen == [("|mask-user=a***",)]
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as error:
        ask(client, USER, "SELECT sub FROM identity.accounts WHERE email::integer > 0")
    assert '"a***"' in str(error.value)
    assert not any(address in str(error.value) for address in ACCOUNTS.values())


def test_order_by_sorts_the_masked_values(client: Conn, admin: Conn) -> None:
    """A masked role that sees every row (admin, masked with hash only in this test): ORDER BY
    email orders the pseudonyms, not the addresses, and every row is still there (no fewer)."""
    admin.execute(
        "INSERT INTO platform.masking_rule (schema_name, table_name, column_name, role, method) "
        "VALUES ('identity', 'accounts', 'email', 'api_admin', 'hash')"
    )
    admin.execute("SELECT platform.apply_masking()")
    try:
        rows = ask(client, ADMIN, "SELECT sub, email FROM identity.accounts ORDER BY email")
        mine = [(sub, email) for sub, email in rows if sub in ACCOUNTS]
        assert mine == sorted(((sub, hmac_of(admin, ACCOUNTS[sub])) for sub in ACCOUNTS),
                              key=lambda row: row[1])  # fmt: skip
        assert [sub for sub, _ in mine] != sorted(ACCOUNTS, key=ACCOUNTS.__getitem__)
    finally:
        admin.execute("DELETE FROM platform.masking_rule WHERE role = 'api_admin'")
        admin.execute("SELECT platform.apply_masking()")
    seen = dict(ask(client, ADMIN, "SELECT sub, email FROM identity.accounts"))
    assert seen["mask-more"] == "erin@example.net"


def test_masking_never_widens_row_access(client: Conn, admin: Conn) -> None:
    """Each caller sees through the view exactly the rows its policies give it on the table."""
    total = first(admin, "SELECT count(*) FROM identity_private.accounts")[0]
    assert ask(client, USER, "SELECT sub FROM identity.accounts") == [("mask-user",)]
    assert ask(client, EDITOR, "SELECT sub FROM identity.accounts") == [("mask-editor",)]
    assert ask(client, ADMIN, "SELECT count(*) FROM identity.accounts") == [(total,)]
    anonymous = ("api_anonymous", "")
    assert ask(client, anonymous, "SELECT count(*) FROM identity.accounts") == [(0,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        ask(client, ("api_service_cms", "cms-self"), "SELECT sub FROM identity.accounts")


def test_writes_run_as_the_caller(client: Conn) -> None:
    """INSTEAD OF trigger: the caller's grants and policies on the table decide every write."""
    editor_update = (
        "UPDATE identity.accounts SET display_name = 'Changed' WHERE sub = %s RETURNING sub, email"
    )
    [(sub, email)] = ask(client, EDITOR, editor_update, "mask-editor", rollback=True)
    assert (sub, len(email)) == ("mask-editor", 64), "RETURNING shows the editor's masked value"
    assert ask(client, EDITOR, editor_update, "mask-other", rollback=True) == []
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        ask(client, USER, editor_update, "mask-user", rollback=True)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # WITH CHECK: not its subject
        ask(client, EDITOR, "INSERT INTO identity.accounts (sub, display_name) "
            "VALUES ('someone-else', 'X') RETURNING sub", rollback=True)  # fmt: skip
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        ask(
            client, EDITOR, "DELETE FROM identity.accounts WHERE sub = 'mask-editor'", rollback=True
        )


def test_an_update_never_stores_the_masked_value(client: Conn, admin: Conn) -> None:
    ask(
        client,
        EDITOR,
        "UPDATE identity.accounts SET display_name = 'Bobby' WHERE sub = 'mask-editor'",
    )
    stored = first(
        admin, "SELECT display_name, email FROM identity_private.accounts WHERE sub = 'mask-editor'"
    )
    assert stored == ("Bobby", "bob@example.com")


def test_inserts_fill_defaults_and_identity_as_the_table_would(client: Conn, admin: Conn) -> None:
    caller = ("api_editor", "mask-new-editor")
    [(row_id, sub, email)] = ask(
        client, caller, "INSERT INTO identity.accounts (display_name, email) "
        "VALUES ('New', 'new@example.com') RETURNING id, sub, email", rollback=True,
    )  # fmt: skip
    assert isinstance(row_id, int)
    assert (sub, email) == ("mask-new-editor", "new@example.com")


def test_the_publication_path_is_closed_to_api_roles(client: Conn) -> None:
    """CDC: a publication or a logical slot would carry the raw column; API roles get neither."""
    for caller in (USER, EDITOR):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ask(client, caller, "CREATE PUBLICATION leak FOR TABLE identity_private.accounts",
                rollback=True)  # fmt: skip
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ask(client, caller, "SELECT pg_create_logical_replication_slot('leak', 'pgoutput')",
                rollback=True)  # fmt: skip


def test_apply_is_idempotent_and_an_emptied_config_unmasks(client: Conn, admin: Conn) -> None:
    view = first(admin, "SELECT 'identity.accounts'::regclass::oid")[0]
    admin.execute("SELECT platform.apply_masking()")
    assert first(admin, "SELECT 'identity.accounts'::regclass::oid")[0] == view
    rules = admin.execute("SELECT * FROM platform.masking_rule").fetchall()
    admin.execute("DELETE FROM platform.masking_rule")
    admin.execute("SELECT platform.apply_masking()")
    try:
        kind = first(
            admin, "SELECT relkind::text FROM pg_class WHERE oid = 'identity.accounts'::regclass"
        )
        assert kind == ("r",)
        assert ask(client, USER, "SELECT email FROM identity.accounts") == [("alice@example.com",)]
    finally:
        with admin.cursor() as cur:
            cur.executemany(
                "INSERT INTO platform.masking_rule VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rules
            )
        admin.execute("SELECT platform.apply_masking()")
    assert ask(client, USER, "SELECT email FROM identity.accounts") == [("a***",)]


def test_a_missing_column_stops_the_apply_with_its_name(admin: Conn) -> None:
    with admin.transaction(force_rollback=True):
        admin.execute(
            "INSERT INTO platform.masking_rule "
            "(schema_name, table_name, column_name, role, method) "
            "VALUES ('identity', 'accounts', 'phone', 'api_user', 'hash')"
        )
        with pytest.raises(psycopg.errors.UndefinedColumn, match=r"identity\.accounts\.phone"):
            admin.execute("SELECT platform.apply_masking()")


def test_a_serial_key_keeps_the_tables_rule(client: Conn, admin: Conn) -> None:
    """A bigserial column's default names the sequence, which moves with the table: the view
    carries no copy of it (a stale name), the table's own default fires, and API roles are
    refused the sequence as on any table (docs/database.md: no sequence privileges)."""
    admin.execute(
        "SET ROLE pgplatform_owner; "
        "CREATE TABLE identity.notes (id bigserial PRIMARY KEY, "
        "owner_sub text NOT NULL DEFAULT platform.jwt_sub(), secret text); "
        "CREATE POLICY notes_own ON identity.notes TO api_editor "
        "USING (owner_sub = (SELECT platform.jwt_sub())) "
        "WITH CHECK (owner_sub = (SELECT platform.jwt_sub())); "
        "RESET ROLE; "
        "INSERT INTO platform.masking_rule (schema_name, table_name, column_name, role, method) "
        "VALUES ('identity', 'notes', 'secret', 'api_user', 'hash'); "
        "SELECT platform.apply_masking()"
    )
    try:
        assert first(
            admin, "SELECT relkind::text FROM pg_class WHERE oid = 'identity.notes'::regclass"
        ) == ("v",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="sequence notes_id_seq"):
            ask(client, EDITOR, "INSERT INTO identity.notes (secret) VALUES ('s')", rollback=True)
    finally:
        admin.execute("DELETE FROM platform.masking_rule WHERE table_name = 'notes'")
        admin.execute("SELECT platform.apply_masking()")
        admin.execute("DROP TABLE identity.notes")


def test_an_update_that_changes_nothing_still_runs_as_the_callers_update(client: Conn) -> None:
    """PATCH with the values already there: an UPDATE all the same (the identity column
    GENERATED ALWAYS is not what it sets), bound by the caller's policy."""
    query = "UPDATE identity.accounts SET sub = sub WHERE sub = 'mask-editor' RETURNING sub"
    assert ask(client, EDITOR, query, rollback=True) == [("mask-editor",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        ask(client, USER, query.replace("mask-editor", "mask-user"), rollback=True)


def test_upserts_are_refused_on_a_masked_table(client: Conn) -> None:
    """docs/masking.md, Limits: ON CONFLICT (PostgREST's merge-duplicates) on the view."""
    with pytest.raises(psycopg.errors.InvalidColumnReference, match="ON CONFLICT"):
        ask(
            client,
            ADMIN,
            "INSERT INTO identity.accounts (sub, display_name) VALUES ('mask-admin', 'X') "
            "ON CONFLICT (sub) DO UPDATE SET display_name = excluded.display_name",
            rollback=True,
        )
