"""Benchmark: the tenant-scoped query under RLS (a measurement, not a test).

    python -m bench.tenancy [--rows 1000000] [--tenants 100] [--runs 200] [--unindexed-runs 15]

A table of ``--rows`` rows spread over ``--tenants`` tenants in an exposed schema (the platform's
RLS guard enables and forces RLS), registered as a tenanted domain (``platform.tenancy``: claim
``tenant_id``), with the convention's index leading with ``tenant_id``. Two policies on it, one
per role, so both forms run against the same table and plan cache:

* ``api_user``, the convention: ``tenant_id = (SELECT platform.jwt_tenant())`` (an init plan,
  evaluated once per statement);
* ``api_editor``, the per-row form: ``tenant_id = current_setting('request.jwt.claims',
  true)::jsonb ->> 'tenant_id'`` (the claims parsed again wherever the planner evaluates it).

Each is compared with RLS off: the superuser (which bypasses RLS) with an explicit
``WHERE tenant_id = '<tenant>'``. Two queries: the tenant's aggregate
(``count(*), sum(amount_cents)``, 1/``--tenants`` of the table) and its newest page
(``ORDER BY created_at DESC LIMIT 50``). Runs are interleaved on one connection and rotate over
the tenants; every request sets the role, claims and ``app.settings.pgplatform_schema`` as
PostgREST does, and only the query is timed. Then the index is dropped and the aggregate is
measured again (``--unindexed-runs``), for comparison with published numbers taken without one.

The target: RLS on (convention) / RLS off <= 1.2 at the median, for both indexed queries. The
EXPLAIN ANALYZE of each form is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from typing import Any, Final

from bench.common import banner, render_stack, temp_dir
from tests.integration.pg import running_cluster

SCHEMA: Final = "bench"
TARGET: Final = 1.2
_SETTINGS: Final = {"shared_buffers": "256MB", "work_mem": "16MB", "max_connections": "20"}
QUERIES: Final = {
    "aggregate": "SELECT count(*), sum(amount_cents) FROM bench.invoices",
    "page": "SELECT id, number, amount_cents FROM bench.invoices ORDER BY created_at DESC LIMIT 50",
}
# Variant -> API role whose policy applies (None: the superuser with an explicit filter).
VARIANTS: Final = {"rls wrapped": "api_user", "rls per-row": "api_editor", "rls off": None}


def _setup(conn: Any, rows: int, tenants: int) -> None:
    conn.execute(f"CREATE SCHEMA {SCHEMA} AUTHORIZATION pgplatform_owner")
    conn.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO api_user, api_editor")
    conn.execute(f"INSERT INTO platform.exposed_schema (name) VALUES ('{SCHEMA}')")
    conn.execute(f"INSERT INTO platform.tenancy VALUES ('{SCHEMA}', 'tenant_id', true)")
    conn.execute("SET ROLE pgplatform_owner")
    conn.execute(
        f"CREATE TABLE {SCHEMA}.invoices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "tenant_id text NOT NULL DEFAULT platform.jwt_tenant(), number text NOT NULL, "
        "amount_cents bigint NOT NULL, created_at timestamptz NOT NULL)"
    )
    conn.execute(
        f"CREATE POLICY invoices_tenant ON {SCHEMA}.invoices FOR SELECT TO api_user "
        "USING (tenant_id = (SELECT platform.jwt_tenant()))"
    )
    conn.execute(
        f"CREATE POLICY invoices_tenant_per_row ON {SCHEMA}.invoices FOR SELECT TO api_editor "
        "USING (tenant_id = current_setting('request.jwt.claims', true)::jsonb ->> 'tenant_id')"
    )
    conn.execute(f"GRANT SELECT ON {SCHEMA}.invoices TO api_user, api_editor")
    conn.execute("RESET ROLE")
    started = time.perf_counter()
    conn.execute(
        f"INSERT INTO {SCHEMA}.invoices (tenant_id, number, amount_cents, created_at) "
        f"SELECT 'tenant-' || (g % {tenants}), 'INV-' || g, (g::bigint * 7919) % 100000, "
        "timestamptz '2026-01-01' + g * interval '1 second' FROM generate_series(1, "
        f"{rows}) g"
    )
    conn.execute(
        f"CREATE INDEX invoices_tenant_created_idx ON {SCHEMA}.invoices (tenant_id, created_at)"
    )
    conn.execute(f"VACUUM ANALYZE {SCHEMA}.invoices")
    flags = conn.execute(
        f"SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
        f"WHERE oid = '{SCHEMA}.invoices'::regclass"
    ).fetchone()
    print(f"loaded {rows} rows in {time.perf_counter() - started:.1f}s; RLS (on, forced) = {flags}")


def _request(conn: Any, role: str | None, tenant: str, query: str) -> tuple[float, list[Any]]:
    """One request as PostgREST runs it; returns the query's time and rows."""
    with conn.transaction():
        if role is not None:
            conn.execute(f"SET LOCAL ROLE {role}")
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true), "
            "set_config('app.settings.pgplatform_schema', %s, true)",
            (json.dumps({"role": role or "api_user", "sub": "b", "tenant_id": tenant}), SCHEMA),
        )
        if role is None:
            query = _explicit(query, tenant)
        started = time.perf_counter()
        rows = conn.execute(query).fetchall()
        return time.perf_counter() - started, rows


def _explicit(query: str, tenant: str) -> str:
    """The same query with RLS off: the tenant filter written out."""
    condition = f"WHERE tenant_id = '{tenant}'"
    if " ORDER BY " in query:
        head, tail = query.split(" ORDER BY ", 1)
        return f"{head} {condition} ORDER BY {tail}"
    return f"{query} {condition}"


def _measure(conn: Any, query: str, runs: int, tenants: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    order = list(VARIANTS.items())
    for i in range(runs + warmup):
        tenant = f"tenant-{(i * 37) % tenants}"
        results = []
        for name, role in order[i % 3 :] + order[: i % 3]:
            elapsed, rows = _request(conn, role, tenant, query)
            results.append(rows)
            if i >= warmup:
                times[name].append(elapsed)
        if any(rows != results[0] for rows in results):
            raise SystemExit(f"the forms disagree for {tenant}: {results}")
    return times


def _explain(conn: Any, query: str, tenant: str) -> None:
    for name, role in VARIANTS.items():
        banner(f"EXPLAIN ANALYZE, {name}: {query}")
        _, plan = _request(conn, role, tenant, f"EXPLAIN (ANALYZE, BUFFERS) {query}")
        for line in plan:
            print(line[0])


def _report(label: str, times: dict[str, list[float]]) -> float:
    medians = {name: statistics.median(values) for name, values in times.items()}
    off = medians["rls off"]
    print(f"{label}: {len(times['rls off'])} runs each")
    for name, median in medians.items():
        print(f"  {name:12}: median {median * 1000:9.3f} ms   ratio to rls off {median / off:6.3f}")
    return medians["rls wrapped"] / off


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--unindexed-runs", type=int, default=15)
    args = parser.parse_args(argv)

    build = temp_dir("pgplatform-bench-build-")
    try:
        render_stack("staging", build)
        with running_cluster(settings=_SETTINGS) as cluster:
            database = cluster.create_database("app")
            files = [(p.name, p.read_text()) for p in sorted((build / "sql").glob("*.sql"))]
            cluster.apply_sql(database, files)
            with cluster.connect(database) as conn:
                banner(f"setup: {args.rows} rows, {args.tenants} tenants")
                _setup(conn, args.rows, args.tenants)
                for query in QUERIES.values():
                    _explain(conn, query, "tenant-42")
                indexed = {
                    name: _measure(conn, query, args.runs, args.tenants, warmup=20)
                    for name, query in QUERIES.items()
                }
                conn.execute(f"DROP INDEX {SCHEMA}.invoices_tenant_created_idx")
                conn.execute(f"ANALYZE {SCHEMA}.invoices")
                _explain(conn, QUERIES["aggregate"], "tenant-42")
                unindexed = _measure(
                    conn, QUERIES["aggregate"], args.unindexed_runs, args.tenants, warmup=2
                )
        banner("result")
        ratios = [_report(f"{name}, indexed", times) for name, times in indexed.items()]
        _report("aggregate, no index", unindexed)
        worst = max(ratios)
        print(f"RLS on (wrapped) / RLS off, indexed: worst median ratio {worst:.3f} "
              f"(target <= {TARGET})")  # fmt: skip
        return 0 if worst <= TARGET else 1
    finally:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
