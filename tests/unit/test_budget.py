"""Connection budget: the arithmetic, its messages, and the committed stacks fitting it."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from components import inputs
from components.render.budget import (
    ApiClients,
    BudgetInput,
    PoolUsers,
    budget_table,
    compute_budget,
)
from components.settings import SettingsError, parse_settings
from tests.conftest import STACKS, stack_settings

pytestmark = pytest.mark.unit

RESERVED = {"superuser": 3, "replication": 10, "exporters": 3, "migrations": 5}


def budget_input(**changes: Any) -> BudgetInput:
    values: dict[str, Any] = {
        "max_connections": 200,
        "reserved": RESERVED,
        "pgbouncer_replicas": 2,
        "default_pool_size": 10,
        "reserve_pool_size": 2,
        "lookup_connections": 2,
        "max_client_conn": 500,
        "pools": (
            PoolUsers(pool="app_rw", users=("postgrest", "postgraphile")),
            PoolUsers(pool="app_ro", users=("postgrest",)),
        ),
        "clients": (
            ApiClients(name="domains.identity", max_replicas=3, db_pool=5),
            ApiClients(name="graphql", max_replicas=2, db_pool=5),
        ),
    }
    values.update(changes)
    return BudgetInput(**values)


def test_server_side_is_pools_lookups_and_reserved() -> None:
    budget = compute_budget(budget_input())
    values = {t.label: t.value for t in budget.server_terms}
    # 2 replicas x (10 + 2) per (pool, user) pair: 2 users on rw, 1 on ro.
    assert values == {"pool app_rw": 48, "pool app_ro": 24, "auth lookup": 4, "reserved": 21}
    assert budget.server_total == 97
    assert budget.client_total == 3 * 5 + 2 * 5
    assert budget.client_limit == 2 * 500
    assert budget.problems == ()


def test_exactly_at_the_limit_fits_and_one_more_does_not() -> None:
    assert compute_budget(budget_input(max_connections=97)).problems == ()
    [problem] = compute_budget(budget_input(max_connections=96)).problems
    assert problem.key == "postgres.maxConnections"
    assert "over budget by 1:" in problem.message
    assert "pool app_rw 48 + pool app_ro 24 + auth lookup 4 + reserved 21 = 97" in problem.message
    assert "Raise postgres.maxConnections to at least 97" in problem.message
    for key in ("pgbouncer.defaultPoolSize", "pgbouncer.reservePoolSize", "reservedConnections"):
        assert key in problem.message


def test_client_side_names_the_largest_api_and_the_needed_setting() -> None:
    clients = (
        ApiClients(name="domains.content", max_replicas=12, db_pool=50),
        ApiClients(name="domains.identity", max_replicas=2, db_pool=10),
    )
    [problem] = compute_budget(budget_input(clients=clients, max_client_conn=250)).problems
    assert problem.key == "pgbouncer.maxClientConn"
    assert "over budget by 120:" in problem.message  # 600 + 20 - 2 x 250
    assert "pgbouncer.replicas 2 x pgbouncer.maxClientConn 250 = 500" in problem.message
    assert "at least 310" in problem.message
    assert "largest: domains.content 600" in problem.message


def test_unused_pool_costs_nothing() -> None:
    inp = budget_input(pools=(PoolUsers(pool="app_rw", users=("postgrest",)),
                              PoolUsers(pool="app_ro", users=())))  # fmt: skip
    values = {t.label: t.value for t in compute_budget(inp).server_terms}
    assert values["pool app_ro"] == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reserved": {"superuser": 3}}, "reserved: needs exactly"),
        ({"reserved": {**RESERVED, "superuser": -1}}, "reserved.superuser"),
        ({"pgbouncer_replicas": 0}, "pgbouncer_replicas"),
        ({"default_pool_size": True}, "default_pool_size"),
        ({"pools": ()}, "pools: at least one"),
        ({"pools": (PoolUsers(pool="a", users=()), PoolUsers(pool="a", users=()))}, "each once"),
    ],
)
def test_invalid_input_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        budget_input(**changes)


def test_api_and_pool_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="db_pool"):
        ApiClients(name="graphql", max_replicas=1, db_pool=0)
    with pytest.raises(ValueError, match="not a config key"):
        ApiClients(name="graphql; drop", max_replicas=1, db_pool=1)
    with pytest.raises(ValueError, match="distinct"):
        PoolUsers(pool="app_rw", users=("postgrest", "postgrest"))


@pytest.mark.parametrize("stack", STACKS)
def test_committed_stacks_fit(stack: str) -> None:
    settings = stack_settings(stack)
    inp = inputs.budget_input(settings)
    budget = compute_budget(inp)
    assert budget.problems == ()
    assert budget.server_total <= settings.postgres.max_connections
    # PostgREST is the only pool user besides the GraphQL pilot (rw, where enabled).
    users = {p.pool: p.users for p in inp.pools}
    expected_rw = ("postgrest", "postgraphile") if settings.graphql.enabled else ("postgrest",)
    # Staging's only replica reader serves the CDC copies, without the pooler.
    expected_ro = ("postgrest",) if stack == "prod" else ()
    assert users == {"app_rw": expected_rw, "app_ro": expected_ro}
    table = "\n".join(budget_table(budget, inp))
    assert f"of postgres.maxConnections {settings.postgres.max_connections}" in table
    assert re.search(r"domains\.content\s+\d+ max replicas x pool \d+", table)


def _over_budget_raw() -> dict[str, Any]:
    return {
        "publicBaseUrl": "https://api.staging.example.com",
        "auth": {"audience": "pgplatform-staging"},
        "domains": {"identity": {}, "content": {}},
    }


def test_settings_report_the_budget_with_key_and_excess() -> None:
    raw = copy.deepcopy(_over_budget_raw())
    raw["postgres"] = {"maxConnections": 60}
    with pytest.raises(SettingsError) as caught:
        parse_settings("staging", raw)
    [problem] = [p for p in caught.value.problems if p.path == "pgplatform:postgres.maxConnections"]
    # rw: 2 x 12 x (postgrest + postgraphile) = 48, ro unused, lookups 4, reserved 21 = 73.
    assert "server connections over budget by 13" in str(problem)
    assert "= 73 > postgres.maxConnections 60" in str(problem)


def test_settings_report_the_client_budget() -> None:
    raw = copy.deepcopy(_over_budget_raw())
    raw["domains"]["content"] = {"replicas": {"min": 1, "max": 100}, "dbPool": 100}
    raw["pgbouncer"] = {"maxClientConn": 1000, "defaultPoolSize": 5}
    with pytest.raises(SettingsError) as caught:
        parse_settings("staging", raw)
    paths = [p.path for p in caught.value.problems]
    assert paths == ["pgplatform:pgbouncer.maxClientConn"]
    # 100 replicas x (pool 100 + the schema poller 1)
    assert "largest: domains.content 10100" in str(caught.value)


def test_verifying_pooler_needs_a_ca_for_an_external_database() -> None:
    raw = copy.deepcopy(_over_budget_raw())
    raw["postgres"] = {"mode": "external", "host": "db.example.com", "roHost": "ro.example.com"}
    raw["pgbouncer"] = {"serverTlsSslmode": "verify-full"}
    raw["postgresAdminPassword"] = "x" * 20
    with pytest.raises(SettingsError) as caught:
        parse_settings("staging", raw, ["postgresAdminPassword"])
    assert [p.path for p in caught.value.problems] == ["pgplatform:postgres.caSecret"]
