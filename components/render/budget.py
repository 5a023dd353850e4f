"""Connection budget: what the poolers may open against PostgreSQL, and the APIs against them.

Two inequalities, both checked before anything is deployed because each failure mode is silent
until peak load: PostgreSQL refuses logins beyond ``max_connections`` ("sorry, too many
clients"), and PgBouncer refuses clients beyond ``max_client_conn``.

Server side, per PostgreSQL instance (counted as if both pools met on one host, which they do
without replicas and right after a failover)::

    sum pools  pgbouncer replicas x (default_pool_size + reserve_pool_size) x users of the pool
  + pgbouncer replicas x lookup connections (pgbouncer_auth's max_user_connections)
  + sum direct APIs  max replicas x (connection pool + pollers) per replica
  + reserved connections (superuser, replication, exporters, migrations)
  <= max_connections

PgBouncer keeps one server pool per (pool database, user) pair, so a pool's users are the login
roles that connect to it: the authenticators, never the API roles they switch to.

A direct API (the one serving the CDC copies, whose database no pool has) connects to the
replicas itself; counting it on one instance covers the case of a single surviving replica.

Client side::

    sum pooled APIs  max replicas x pool per replica  <=  pgbouncer replicas x max_client_conn

Every failure names the term, how far over it is and the keys that change it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

RESERVED_KINDS: Final = ("superuser", "replication", "exporters", "migrations")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.\[\]-]*$")


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PoolUsers:
    """One PgBouncer pool database and the login roles that connect to it."""

    pool: str
    users: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.users, str) or len(set(self.users)) != len(self.users):
            raise ValueError(f"PoolUsers.users: distinct role names, got {self.users!r}")


@dataclass(frozen=True, kw_only=True)
class ApiClients:
    """One API deployment's most connections to PgBouncer: max replicas x pool per replica."""

    name: str
    """The config key of the API, e.g. ``domains.identity`` or ``graphql``."""
    max_replicas: int
    db_pool: int
    pollers: int = 0
    """Further client connections per replica: PostgREST's schema-cache reloader polls the
    schema version through the same pooler (one short connection at a time)."""
    direct: bool = False
    """Connects to PostgreSQL itself, not through PgBouncer (the API serving the CDC copies):
    its connections count against ``max_connections`` instead of ``max_client_conn``."""

    def __post_init__(self) -> None:
        if not _KEY.match(self.name):
            raise ValueError(f"ApiClients.name: {self.name!r} is not a config key")
        _check_count(f"{self.name}.max_replicas", self.max_replicas, 1)
        _check_count(f"{self.name}.db_pool", self.db_pool, 1)
        _check_count(f"{self.name}.pollers", self.pollers, 0)

    @property
    def connections(self) -> int:
        return self.max_replicas * (self.db_pool + self.pollers)


@dataclass(frozen=True, kw_only=True)
class BudgetInput:
    """Everything both inequalities depend on (mapped from the stack settings)."""

    max_connections: int
    reserved: Mapping[str, int]
    pgbouncer_replicas: int
    default_pool_size: int
    reserve_pool_size: int
    lookup_connections: int
    """Server connections of PgBouncer's auth_query role per instance (its cap)."""
    max_client_conn: int
    pools: tuple[PoolUsers, ...]
    clients: tuple[ApiClients, ...]
    keys: Mapping[str, str] = field(
        default_factory=lambda: {
            "max_connections": "postgres.maxConnections",
            "replicas": "pgbouncer.replicas",
            "default_pool_size": "pgbouncer.defaultPoolSize",
            "reserve_pool_size": "pgbouncer.reservePoolSize",
            "max_client_conn": "pgbouncer.maxClientConn",
            "reserved": "reservedConnections",
        }
    )
    """Config key of each input, for the messages."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reserved", MappingProxyType(dict(self.reserved)))
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        _check_count("max_connections", self.max_connections, 1)
        _check_count("pgbouncer_replicas", self.pgbouncer_replicas, 1)
        _check_count("default_pool_size", self.default_pool_size, 1)
        _check_count("reserve_pool_size", self.reserve_pool_size, 0)
        _check_count("lookup_connections", self.lookup_connections, 0)
        _check_count("max_client_conn", self.max_client_conn, 1)
        if set(self.reserved) != set(RESERVED_KINDS):
            raise ValueError(f"reserved: needs exactly {list(RESERVED_KINDS)}")
        for kind, value in self.reserved.items():
            _check_count(f"reserved.{kind}", value, 0)
        pools = [p.pool for p in self.pools]
        if not pools or len(set(pools)) != len(pools):
            raise ValueError(f"pools: at least one, each once, got {pools}")
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names):
            raise ValueError(f"clients: each API once, got {names}")


@dataclass(frozen=True, kw_only=True)
class Term:
    """One line of the budget: what it is, how it is computed, its value."""

    label: str
    formula: str
    value: int


@dataclass(frozen=True, kw_only=True)
class BudgetProblem:
    """An exceeded limit: ``key`` is the config key most directly at fault."""

    key: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Both sides of the budget, computed."""

    server_terms: tuple[Term, ...]
    server_limit: int
    client_terms: tuple[Term, ...]
    client_limit: int
    problems: tuple[BudgetProblem, ...]

    @property
    def server_total(self) -> int:
        return sum(t.value for t in self.server_terms)

    @property
    def client_total(self) -> int:
        return sum(t.value for t in self.client_terms)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _sum_text(terms: tuple[Term, ...]) -> str:
    return " + ".join(f"{t.label} {t.value}" for t in terms)


def compute_budget(inp: BudgetInput) -> Budget:
    """Both sides of the budget with a problem for each side over its limit."""
    keys = inp.keys
    per_pair = inp.default_pool_size + inp.reserve_pool_size
    server: list[Term] = []
    for pool in inp.pools:
        users = len(pool.users)
        server.append(
            Term(
                label=f"pool {pool.pool}",
                formula=(
                    f"{_plural(inp.pgbouncer_replicas, 'replica')} x ({inp.default_pool_size} "
                    f"+ {inp.reserve_pool_size}) x {_plural(users, 'user')}"
                    + (f" ({', '.join(pool.users)})" if users else "")
                ),
                value=inp.pgbouncer_replicas * per_pair * users,
            )
        )
    server.append(
        Term(
            label="auth lookup",
            formula=(
                f"{_plural(inp.pgbouncer_replicas, 'replica')} x {inp.lookup_connections} "
                "(auth_query role cap)"
            ),
            value=inp.pgbouncer_replicas * inp.lookup_connections,
        )
    )
    server += [
        Term(
            label=f"{c.name} (direct)",
            formula=f"{c.max_replicas} max replicas x (pool {c.db_pool} + {c.pollers} poller)",
            value=c.connections,
        )
        for c in inp.clients
        if c.direct
    ]
    server.append(
        Term(
            label="reserved",
            formula=" + ".join(f"{kind} {inp.reserved[kind]}" for kind in RESERVED_KINDS),
            value=sum(inp.reserved.values()),
        )
    )
    client = tuple(
        Term(
            label=c.name,
            formula=f"{c.max_replicas} max replicas x pool {c.db_pool}"
            + (f" (+ {c.pollers} schema poller each)" if c.pollers else ""),
            value=c.connections,
        )
        for c in inp.clients
        if not c.direct
    )
    server_terms = tuple(server)
    client_limit = inp.pgbouncer_replicas * inp.max_client_conn
    server_total = sum(t.value for t in server_terms)
    client_total = sum(t.value for t in client)
    problems: list[BudgetProblem] = []
    if server_total > inp.max_connections:
        over = server_total - inp.max_connections
        problems.append(
            BudgetProblem(
                key=keys["max_connections"],
                message=(
                    f"server connections over budget by {over}: {_sum_text(server_terms)} "
                    f"= {server_total} > {keys['max_connections']} {inp.max_connections} "
                    f"(pools: {keys['replicas']} x ({keys['default_pool_size']} + "
                    f"{keys['reserve_pool_size']}) x login roles per pool). Raise "
                    f"{keys['max_connections']} to at least {server_total}, or lower "
                    f"{keys['default_pool_size']}, {keys['reserve_pool_size']}, "
                    f"{keys['replicas']} or {keys['reserved']}.*"
                ),
            )
        )
    if client_total > client_limit:
        over = client_total - client_limit
        largest = max(client, key=lambda t: t.value)
        needed = math.ceil(client_total / inp.pgbouncer_replicas)
        problems.append(
            BudgetProblem(
                key=keys["max_client_conn"],
                message=(
                    f"client connections over budget by {over}: {_sum_text(client)} "
                    f"(max replicas x dbPool) = {client_total} > {keys['replicas']} "
                    f"{inp.pgbouncer_replicas} x {keys['max_client_conn']} "
                    f"{inp.max_client_conn} = {client_limit}. Raise {keys['max_client_conn']} "
                    f"to at least {needed} (or {keys['replicas']}), or lower the replicas.max "
                    f"or dbPool of the APIs (largest: {largest.label} {largest.value})."
                ),
            )
        )
    return Budget(
        server_terms=server_terms,
        server_limit=inp.max_connections,
        client_terms=client,
        client_limit=client_limit,
        problems=tuple(problems),
    )


def budget_table(budget: Budget, inp: BudgetInput) -> list[str]:
    """The budget as text lines for the render summary."""
    keys = inp.keys
    rows = [(t.label, t.formula, t.value) for t in budget.server_terms]
    rows += [(t.label, t.formula, t.value) for t in budget.client_terms]
    width = max(len(label) for label, _, _ in rows)
    formula_width = max(len(formula) for _, formula, _ in rows)

    def line(label: str, formula: str, value: int) -> str:
        return f"  {label.ljust(width)}  {formula.ljust(formula_width)}  {value:6d}"

    spare_server = budget.server_limit - budget.server_total
    spare_client = budget.client_limit - budget.client_total
    out = [
        "",
        f"Connection budget: PostgreSQL {budget.server_total} of {keys['max_connections']} "
        f"{budget.server_limit} ({'spare' if spare_server >= 0 else 'OVER'} "
        f"{abs(spare_server)})",
        *(line(t.label, t.formula, t.value) for t in budget.server_terms),
        f"Clients: PgBouncer {budget.client_total} of {keys['replicas']} "
        f"{inp.pgbouncer_replicas} x {keys['max_client_conn']} {inp.max_client_conn} "
        f"= {budget.client_limit} "
        f"({'spare' if spare_client >= 0 else 'OVER'} {abs(spare_client)})",
        *(line(t.label, t.formula, t.value) for t in budget.client_terms),
    ]
    return out
