"""Benchmark: cost of row level security on the own-records query (a measurement, not a test).

    python -m bench.rls_overhead [--rows 1000000] [--subjects 1000] [--runs 300]

A table of ``--rows`` rows spread over ``--subjects`` subjects, created in an exposed schema by
the schema owner (so the platform's RLS guard enables and forces RLS), with an index on the
owner column and the platform's own-records policy::

    USING (owner_sub = (SELECT platform.jwt_sub()))

The claim helper in an init plan is evaluated once per statement, and the comparison is an
index condition. Compared on one connection, interleaved:

* RLS on: PostgREST's request as ``api_user`` (``SET LOCAL ROLE``, claims set), the query
  ``SELECT id, payload FROM bench.items`` (the policy supplies the filter);
* RLS off: the same rows by an explicit filter, ``... WHERE owner_sub = '<sub>'``, as the
  superuser (which bypasses RLS).

The target is a median ratio <= 1.2; the EXPLAIN ANALYZE of both is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from typing import Any

from bench.common import banner, render_stack, temp_dir
from tests.integration.pg import running_cluster

SCHEMA = "bench"
TARGET = 1.2
_SETTINGS = {"shared_buffers": "256MB", "work_mem": "16MB", "max_connections": "20"}


def _setup(conn: Any, rows: int, subjects: int) -> None:
    conn.execute(f"CREATE SCHEMA {SCHEMA} AUTHORIZATION pgplatform_owner")
    conn.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO api_user")
    conn.execute(f"INSERT INTO platform.exposed_schema (name) VALUES ('{SCHEMA}')")
    conn.execute("SET ROLE pgplatform_owner")
    conn.execute(
        f"CREATE TABLE {SCHEMA}.items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "owner_sub text NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL "
        "DEFAULT now())"
    )
    conn.execute(
        f"CREATE POLICY items_own ON {SCHEMA}.items FOR SELECT TO api_user "
        "USING (owner_sub = (SELECT platform.jwt_sub()))"
    )
    conn.execute(f"GRANT SELECT ON {SCHEMA}.items TO api_user")
    conn.execute("RESET ROLE")
    started = time.perf_counter()
    conn.execute(
        f"INSERT INTO {SCHEMA}.items (owner_sub, payload) "
        f"SELECT 'user-' || (g % {subjects}), md5(g::text) FROM generate_series(1, {rows}) g"
    )
    conn.execute(f"CREATE INDEX items_owner_idx ON {SCHEMA}.items (owner_sub)")
    conn.execute(f"VACUUM ANALYZE {SCHEMA}.items")
    flags = conn.execute(
        f"SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
        f"WHERE oid = '{SCHEMA}.items'::regclass"
    ).fetchone()
    print(f"loaded {rows} rows in {time.perf_counter() - started:.1f}s; RLS (on, forced) = {flags}")


def _rls_query(conn: Any, sub: str, query: str) -> list[Any]:
    with conn.transaction():
        conn.execute("SET LOCAL ROLE api_user")
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true)",
            (json.dumps({"role": "api_user", "sub": sub}),),
        )
        return conn.execute(query).fetchall()


def _timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)

    build = temp_dir("pgplatform-bench-build-")
    try:
        render_stack("staging", build)
        with running_cluster(settings=_SETTINGS) as cluster:
            database = cluster.create_database("app")
            files = [(p.name, p.read_text()) for p in sorted((build / "sql").glob("*.sql"))]
            cluster.apply_sql(database, files)
            with cluster.connect(database) as conn:
                banner(f"setup: {args.rows} rows, {args.subjects} subjects")
                _setup(conn, args.rows, args.subjects)
                sub = "user-42"
                with_rls = f"SELECT id, payload FROM {SCHEMA}.items"
                without = f"SELECT id, payload FROM {SCHEMA}.items WHERE owner_sub = '{sub}'"
                count_rls = len(_rls_query(conn, sub, with_rls))
                count_plain = len(conn.execute(without).fetchall())
                assert count_rls == count_plain == args.rows // args.subjects, (
                    count_rls,
                    count_plain,
                )

                banner("EXPLAIN ANALYZE, RLS on (api_user, claims set)")
                for line in _rls_query(conn, sub, f"EXPLAIN (ANALYZE, BUFFERS) {with_rls}"):
                    print(line[0])
                banner("EXPLAIN ANALYZE, RLS off (explicit filter)")
                for line in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {without}").fetchall():
                    print(line[0])

                # The claim setup happens in both loops; only the query itself is timed.
                rls_times: list[float] = []
                plain_times: list[float] = []
                for i in range(args.runs + 20):
                    other = f"user-{i % args.subjects}"
                    plain_sql = (
                        f"SELECT id, payload FROM {SCHEMA}.items WHERE owner_sub = '{other}'"
                    )
                    with conn.transaction():
                        conn.execute("SET LOCAL ROLE api_user")
                        conn.execute(
                            "SELECT set_config('request.jwt.claims', %s, true)",
                            (json.dumps({"role": "api_user", "sub": other}),),
                        )
                        rls = _timed(lambda: conn.execute(with_rls).fetchall())
                    with conn.transaction():
                        conn.execute(
                            "SELECT set_config('request.jwt.claims', %s, true)",
                            (json.dumps({"role": "api_user", "sub": other}),),
                        )
                        plain = _timed(lambda sql=plain_sql: conn.execute(sql).fetchall())
                    if i >= 20:  # warm-up
                        rls_times.append(rls)
                        plain_times.append(plain)
        rls_median = statistics.median(rls_times)
        plain_median = statistics.median(plain_times)
        ratio = rls_median / plain_median
        banner("result")
        print(f"own-records query, {args.runs} runs each, {args.rows // args.subjects} rows/result")
        print(f"  RLS on : median {rls_median * 1000:.3f} ms")
        print(f"  RLS off: median {plain_median * 1000:.3f} ms")
        print(f"  ratio  : {ratio:.3f} (target <= {TARGET})")
        return 0 if ratio <= TARGET else 1
    finally:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
