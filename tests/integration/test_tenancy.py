"""Tenants on real PostgreSQL 15 through the rendered PgBouncer, as PostgREST runs requests.

Both stacks declare ``billing`` tenanted (``domains.billing.tenancy``: claim ``tenant_id``,
required); staging adds two machine clients, ``ingest``, bound to tenant ``acme``, and
``support``, declared cross-tenant (their tests, like those of the anonymous role and the groups
mapping, which prod does not have, run on staging). The example table ``billing.invoices``
(``migrations/billing/0001_invoices.sql``) follows the convention of docs/database.md. Every
request is PostgREST's per-request transaction run as the authenticator through PgBouncer
(``test_security_model.request``) with the ``app.settings.*`` of billing's rendered
postgrest.conf, so ``platform.pre_request()`` and the policies see what they see under
PostgREST. Writes run with ``Prefer: tx=rollback`` semantics unless a test needs them kept.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from tests.conftest import STACKS
from tests.integration.pooler import RunningStack, running_stack
from tests.integration.test_group_roles import rendered_schema_setting
from tests.integration.test_security_model import request

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
ROWS: Final = {"acme": {"A-1": 100, "A-2": 250}, "globex": {"G-1": 4000}}
TOTALS: Final = {tenant: sum(rows.values()) for tenant, rows in ROWS.items()}
POOL_CLIENTS: Final = 24
POOL_REQUESTS: Final = 12


@pytest.fixture(scope="module", params=STACKS)
def env(
    request: pytest.FixtureRequest, rendered_stack: Callable[[str], Path]
) -> Iterator[RunningStack]:
    stack = str(request.param)
    with running_stack(stack, rendered_stack(stack)) as running:
        with running.cluster.connect(running.database) as admin, admin.cursor() as cur:
            cur.executemany(
                "INSERT INTO billing.invoices (tenant_id, number, amount_cents) "
                "VALUES (%s, %s, %s)",
                [(t, n, a) for t, rows in ROWS.items() for n, a in rows.items()],
            )
        yield running


@pytest.fixture(scope="module")
def billing(env: RunningStack) -> dict[str, str]:
    """The app.settings of billing's rendered postgrest.conf."""
    key, schema = rendered_schema_setting(env.build, "billing")
    assert schema == "billing"
    return {key: schema}


STAGING_ONLY = pytest.mark.parametrize("env", ["staging"], indirect=True)
"""Only staging has the anonymous role, the groups mapping and the tenant-bound clients."""


@pytest.fixture
def client(env: RunningStack) -> Iterator[Conn]:
    with env.connect() as conn:
        yield conn


def token(role: str, tenant: Any = None, *, sub: str = "someone", **extra: Any) -> dict[str, Any]:
    claims = {"role": role, "aud": "pgplatform-staging", "sub": sub, **extra}
    return claims if tenant is None else {**claims, "tenant_id": tenant}


def as_tenant(
    conn: Conn,
    settings: dict[str, str],
    tenant: Any,
    query: str,
    params: tuple[Any, ...] = (),
    *,
    role: str = "api_editor",
    rollback: bool = True,
    **extra: Any,
) -> list[tuple[Any, ...]]:
    """One request to billing by ``role`` with a token naming ``tenant`` (None: no claim)."""
    claims = token(role, tenant, **extra)
    return request(conn, role, claims, query, params, rollback=rollback, app_settings=settings)


def numbers(rows: list[tuple[Any, ...]]) -> set[str]:
    return {str(row[0]) for row in rows}


# -- reads: table, view, RPC, both pools -----------------------------------------------------------
@pytest.mark.parametrize("tenant", sorted(ROWS))
@pytest.mark.parametrize("pool", ["rw", "ro"])
def test_each_tenant_reads_only_its_rows(
    env: RunningStack, billing: dict[str, str], tenant: str, pool: str
) -> None:
    with env.connect(env.rw_pool if pool == "rw" else env.ro_pool) as conn:
        table = as_tenant(conn, billing, tenant, "SELECT number, tenant_id FROM billing.invoices")
        view = as_tenant(conn, billing, tenant, "SELECT number FROM billing.open_invoices")
        total = as_tenant(conn, billing, tenant, "SELECT billing.tenant_total()")
        guessed = as_tenant(
            conn,
            billing,
            tenant,
            "SELECT number FROM billing.invoices WHERE tenant_id <> %s",
            (tenant,),
        )
    assert numbers(table) == set(ROWS[tenant])
    assert {row[1] for row in table} == {tenant}
    assert numbers(view) == set(ROWS[tenant])
    assert total == [(TOTALS[tenant],)]
    assert guessed == [], "filtering on another tenant finds nothing"


def test_a_tenant_nobody_has_rows_for_sees_nothing(client: Conn, billing: dict[str, str]) -> None:
    assert as_tenant(client, billing, "initech", "SELECT * FROM billing.invoices") == []
    assert as_tenant(client, billing, "initech", "SELECT billing.tenant_total()") == [(0,)]


# -- writes ----------------------------------------------------------------------------------------
def test_insert_lands_in_the_token_tenant(client: Conn, billing: dict[str, str]) -> None:
    rows = as_tenant(
        client,
        billing,
        "globex",
        "INSERT INTO billing.invoices (number, amount_cents) VALUES ('G-9', 1) RETURNING tenant_id",
    )
    assert rows == [("globex",)]


def test_insert_into_another_tenant_is_refused(client: Conn, billing: dict[str, str]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_tenant(
            client,
            billing,
            "globex",
            "INSERT INTO billing.invoices (tenant_id, number, amount_cents) "
            "VALUES ('acme', 'planted', 1)",
        )


def test_update_reaches_only_the_token_tenant(client: Conn, billing: dict[str, str]) -> None:
    update = "UPDATE billing.invoices SET amount_cents = 0 WHERE number = %s RETURNING number"
    assert as_tenant(client, billing, "globex", update, ("A-1",)) == []
    assert as_tenant(client, billing, "globex", update, ("G-1",)) == [("G-1",)]
    everything = "UPDATE billing.invoices SET status = 'void' RETURNING tenant_id"
    assert {row[0] for row in as_tenant(client, billing, "acme", everything)} == {"acme"}


def test_a_row_cannot_be_handed_to_another_tenant(client: Conn, billing: dict[str, str]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_tenant(
            client,
            billing,
            "globex",
            "UPDATE billing.invoices SET tenant_id = 'acme' WHERE number = 'G-1'",
        )


def test_delete_reaches_only_the_token_tenant(client: Conn, billing: dict[str, str]) -> None:
    delete = "DELETE FROM billing.invoices WHERE number = ANY(%s) RETURNING number"
    every_number = ([n for rows in ROWS.values() for n in rows],)
    assert numbers(as_tenant(client, billing, "acme", delete, every_number, role="api_admin")) == {
        "A-1",
        "A-2",
    }


# -- upserts ---------------------------------------------------------------------------------------
UPSERT: Final = (
    "INSERT INTO billing.invoices (number, amount_cents) VALUES (%s, %s) "
    "ON CONFLICT (tenant_id, number) DO UPDATE SET amount_cents = excluded.amount_cents "
    "RETURNING tenant_id, number, amount_cents"
)


def test_upsert_on_another_tenant_key_creates_an_own_row(
    client: Conn, env: RunningStack, billing: dict[str, str]
) -> None:
    """PostgREST's upsert (Prefer: resolution=merge-duplicates, on_conflict=tenant_id,number)."""
    rows = as_tenant(client, billing, "globex", UPSERT, ("A-1", 7), rollback=False)
    try:
        assert rows == [("globex", "A-1", 7)]
        again = as_tenant(client, billing, "globex", UPSERT, ("A-1", 9))
        assert again == [("globex", "A-1", 9)], "the second upsert updates globex's own row"
        with env.cluster.connect(env.database) as admin:
            acme = admin.execute(
                "SELECT amount_cents FROM billing.invoices WHERE tenant_id = 'acme' "
                "AND number = 'A-1'"
            ).fetchall()
        assert acme == [(ROWS["acme"]["A-1"],)], "acme's row is untouched"
    finally:
        with env.cluster.connect(env.database) as admin:
            admin.execute(
                "DELETE FROM billing.invoices WHERE tenant_id = 'globex' AND number = 'A-1'"
            )


def test_upsert_naming_another_tenant_is_refused(client: Conn, billing: dict[str, str]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_tenant(
            client,
            billing,
            "globex",
            "INSERT INTO billing.invoices (tenant_id, number, amount_cents) "
            "VALUES ('acme', 'A-1', 0) ON CONFLICT (tenant_id, number) "
            "DO UPDATE SET amount_cents = excluded.amount_cents",
        )


def test_upsert_rpc_stays_in_the_tenant(client: Conn, billing: dict[str, str]) -> None:
    rpc = "SELECT tenant_id, amount_cents FROM billing.record_invoice(%s, %s)"
    assert as_tenant(client, billing, "acme", rpc, ("A-1", 1)) == [("acme", 1)]
    assert as_tenant(client, billing, "globex", rpc, ("A-1", 2)) == [("globex", 2)]


# -- the required claim and its shape --------------------------------------------------------------
@pytest.mark.parametrize("role", ["api_user", "api_editor", "api_admin"])
def test_required_claim_refuses_tokens_without_it(
    client: Conn, billing: dict[str, str], role: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant_id claim"):
        as_tenant(client, billing, None, "SELECT 1", role=role)


@pytest.mark.parametrize("value", ["", 42, None, ["acme"], {"id": "acme"}, True])
def test_a_tenant_claim_must_be_a_non_empty_string(
    client: Conn, billing: dict[str, str], value: Any
) -> None:
    claims = {**token("api_editor"), "tenant_id": value}
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a tenant id"):
        request(client, "api_editor", claims, "SELECT 1", rollback=True, app_settings=billing)


@STAGING_ONLY
def test_tokens_elevated_by_groups_need_the_claim_too(
    client: Conn, billing: dict[str, str]
) -> None:
    """The rule applies to the final role: groups lift api_anonymous to api_editor first."""
    claims = token("api_anonymous", groups=["editors"])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant_id claim"):
        request(client, "api_anonymous", claims, "SELECT 1", rollback=True, app_settings=billing)
    rows = request(
        client,
        "api_anonymous",
        {**claims, "tenant_id": "acme"},
        "SELECT current_user::text, count(*) FROM billing.invoices",
        rollback=True,
        app_settings=billing,
    )
    assert rows == [("api_editor", len(ROWS["acme"]))]


@STAGING_ONLY
def test_anonymous_requests_pass_and_see_no_tenant_rows(
    client: Conn, billing: dict[str, str]
) -> None:
    claims = {"role": "api_anonymous"}
    rows = request(
        client,
        "api_anonymous",
        claims,
        "SELECT count(*) FROM billing.invoices",
        rollback=True,
        app_settings=billing,
    )
    assert rows == [(0,)]


def test_other_domains_are_not_tenanted(client: Conn, env: RunningStack) -> None:
    """Without tenancy in its config, a domain's requests need no tenant claim and have none."""
    key, schema = rendered_schema_setting(env.build, "content")
    rows = request(
        client,
        "api_editor",
        token("api_editor", "acme"),
        "SELECT platform.jwt_tenant(), count(*) FROM billing.invoices",
        rollback=True,
        app_settings={key: schema},
    )
    assert rows == [(None, 0)], "billing's rows stay hidden from a request to another domain"
    no_claim = request(
        client, "api_editor", token("api_editor"), "SELECT 1", rollback=True,
        app_settings={key: schema},
    )  # fmt: skip
    assert no_claim == [(1,)]


# -- machine clients -------------------------------------------------------------------------------
@STAGING_ONLY
def test_a_scoped_client_works_only_in_its_tenant(client: Conn, billing: dict[str, str]) -> None:
    role = "api_service_ingest"
    rows = as_tenant(client, billing, "acme", "SELECT number FROM billing.invoices", role=role)
    assert numbers(rows) == set(ROWS["acme"])
    for other in ("globex", None):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="scoped to one tenant"):
            as_tenant(client, billing, other, "SELECT 1", role=role)


@STAGING_ONLY
def test_a_cross_tenant_client_reads_all_and_is_logged(
    client: Conn, env: RunningStack, billing: dict[str, str]
) -> None:
    role = "api_service_support"
    rows = as_tenant(client, billing, None, "SELECT number FROM billing.invoices", role=role,
                     sub="support-bot")  # fmt: skip
    assert numbers(rows) == {n for tenant_rows in ROWS.values() for n in tenant_rows}
    log = env.cluster.server_log()
    assert (
        "pgplatform cross-tenant request: role=api_service_support sub=support-bot "
        "schema=billing tenant=(all) method=POST path=/rpc/case"
    ) in log


@STAGING_ONLY
def test_writes_are_audited_with_tenant_and_cross_tenant_mark(
    client: Conn, env: RunningStack, billing: dict[str, str]
) -> None:
    insert = "INSERT INTO billing.invoices (number, amount_cents) VALUES (%s, 5) RETURNING id"
    [(own_id,)] = as_tenant(client, billing, "acme", insert, ("AUD-1",), rollback=False)
    [(cross_id,)] = as_tenant(
        client, billing, "globex", insert, ("AUD-2",), role="api_service_support",
        rollback=False,
    )  # fmt: skip
    with env.cluster.connect(env.database) as admin:
        audit = admin.execute(
            "SELECT role::text, tenant, cross_tenant FROM audit.log "
            "WHERE table_name = 'invoices' AND (new_row ->> 'id')::bigint = ANY(%s) ORDER BY id",
            ([own_id, cross_id],),
        ).fetchall()
        admin.execute("DELETE FROM billing.invoices WHERE id = ANY(%s)", ([own_id, cross_id],))
    assert audit == [("api_editor", "acme", False), ("api_service_support", "globex", True)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_tenant(
            client, billing, "globex",
            "INSERT INTO billing.invoices (tenant_id, number, amount_cents) "
            "VALUES ('acme', 'x', 1)",
            role="api_service_support",
        )  # fmt: skip


# -- transaction pooling ---------------------------------------------------------------------------
def test_switching_tenant_on_a_pooled_session_leaks_nothing(
    env: RunningStack, billing: dict[str, str]
) -> None:
    """Clients change tenant from request to request on shared server connections.

    Each request also leaves a session-level tenant claim behind (as an RPC calling
    set_config(..., false) could): the next transaction on that server connection, whoever
    sends it, still sees only its own token's tenant.
    """
    served: dict[int, set[str]] = defaultdict(set)
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(POOL_CLIENTS)
    query = (
        "SELECT pg_backend_pid(), platform.jwt_tenant(), "
        "coalesce(array_agg(DISTINCT i.tenant_id), '{}'), billing.tenant_total() "
        "FROM billing.invoices i"
    )

    def client_loop(index: int) -> None:
        chooser = random.Random(index)  # noqa: S311 - test data, not security
        try:
            with env.connect() as conn:
                start.wait(timeout=30)
                for _ in range(POOL_REQUESTS):
                    tenant = chooser.choice(sorted(ROWS))
                    stray = chooser.choice(sorted(ROWS))
                    rows = as_tenant(conn, billing, tenant, query, sub=f"pool-{index}")
                    [(pid, seen, tenants, total)] = rows
                    if (seen, list(tenants), total) != (tenant, [tenant], TOTALS[tenant]):
                        raise AssertionError(f"{tenant} saw {rows}")
                    as_tenant(
                        conn, billing, tenant,
                        "SELECT set_config('request.jwt.claims', %s, false)",
                        (f'{{"role": "api_editor", "sub": "x", "tenant_id": "{stray}"}}',),
                        rollback=False,
                    )  # fmt: skip
                    with lock:
                        served[int(pid)].add(tenant)
        except Exception as error:  # collected and asserted below
            with lock:
                errors.append(f"client {index}: {error!r}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(POOL_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(served) < POOL_CLIENTS, "clients shared server connections"
    assert any(len(tenants) > 1 for tenants in served.values()), "a connection served both"
