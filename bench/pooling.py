"""Benchmark: PgBouncer as rendered, under 10x more clients than PostgreSQL allows connections.

    python -m bench.pooling [--stack staging] [--seconds 10] [--max-connections 40]

A throw-away PostgreSQL 15 configured like the deployed one where it matters (TLS only, SCRAM,
``max_connections`` = ``--max-connections``) with the stack's SQL bundle and example domains,
10,000 accounts and 5,000 articles, and a real PgBouncer started with the stack's rendered
``pgbouncer.ini`` (only paths, ports and hosts changed). pgbench (``postgresql-contrib``) runs
PostgREST's per-request transaction as the authenticator, five round trips like PostgREST:
``BEGIN``; role + claims + request settings in one ``set_config`` statement; the pre-request
hook; the query, shaped like PostgREST's (``json_agg`` of the rows); ``COMMIT``. Two requests:
``me`` (the caller's own account, one row) and ``page`` (25 published articles).

Per request:
1. direct: pgbench straight to PostgreSQL over TLS (the database accepts nothing else) at
   client counts that fit ``max_connections``; the best tps is the baseline;
2. pooled: 10 x ``max_connections`` clients through PgBouncer (``<database>_rw``);
3. direct with the same 10 x clients, to show what the pooler prevents.

Targets: pooled with zero failed connections or transactions and tps >= 0.8 x the best direct
tps. Also printed: CPU per transaction (all processes share this machine's cores) and
PgBouncer's share of it. Loopback only; every run is bounded by ``--seconds``.

``--reset-cost RUNS`` measures instead what resetting every server connection after each
transaction costs (``server_reset_query_always = 1`` with ``DISCARD ALL``, docs/database.md):
the pooled run of each request, ``RUNS`` times, alternating between the rendered ini and the
same ini with the reset on or off, and prints each variant's tps (median, min, max) and the
median cost. The decision's threshold is a cost below 10 %.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import banner, render_stack, temp_dir, tool
from components.render.pgbouncer import RESET_PARAMETERS
from tests.integration.pg import PG_BIN, running_cluster
from tests.integration.pooler import PASSWORDS, ini_sections, prepare_database, start_pgbouncer

TARGET = 0.8
ACCOUNTS = 10_000
ARTICLES = 5_000
_SETUP = (
    "SELECT set_config('role', 'api_user', true), "
    "set_config('request.jwt.claims', "
    '\'{{"role":"api_user","sub":"bench-\' || :n || \'"}}\', true), '
    "set_config('request.method', 'GET', true), "
    "set_config('request.path', '/{path}', true);"
)
REQUESTS = {
    "me": (
        "accounts",
        "SELECT coalesce(json_agg(_t), '[]') AS body, count(*) AS page_total "
        "FROM (SELECT id, sub, display_name FROM identity.accounts) _t;",
    ),
    "page": (
        "articles",
        "SELECT coalesce(json_agg(_t), '[]') AS body, count(*) AS page_total "
        "FROM (SELECT id, author_sub, title, body, updated_at FROM content.articles "
        "WHERE published ORDER BY id DESC LIMIT 25) _t;",
    ),
}


def script_text(request: str) -> str:
    path, query = REQUESTS[request]
    lines = [
        f"\\set n random(0, {ACCOUNTS - 1})",
        "BEGIN;",
        _SETUP.format(path=path).replace("{{", "{").replace("}}", "}"),
        "SELECT platform.pre_request();",
        query,
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    label: str
    clients: int
    tps: float
    failed: int
    aborted: bool
    cpu_ms_per_txn: float
    pgbouncer_share: float
    pgbench_share: float
    returncode: int
    output: str


def _machine_cpu() -> tuple[float, float]:
    """(total, idle) seconds of all cores since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return sum(fields) / tick, (fields[3] + fields[4]) / tick


def _process_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pgbench(
    label: str,
    *,
    host: str,
    port: int,
    dbname: str,
    clients: int,
    seconds: int,
    script: Path,
    sslmode: str,
    pooler_pid: int | None = None,
) -> Run:
    env = {
        **os.environ,
        "PGPASSWORD": PASSWORDS["postgrest"],
        "PGSSLMODE": sslmode,
        "PGCONNECT_TIMEOUT": "10",
    }
    busy_before, idle_before = _machine_cpu()
    pooler_before = _process_cpu(pooler_pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [
            tool(PG_BIN / "pgbench", "postgresql-contrib"),
            *("-h", host, "-p", str(port), "-U", "postgrest", "-n", "-M", "simple"),
            *("-c", str(clients), "-j", str(min(clients, 4)), "-T", str(seconds)),
            *("-f", str(script), dbname),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pgbench_cpu = (children.ru_utime - children_before.ru_utime) + (
        children.ru_stime - children_before.ru_stime
    )
    busy_after, idle_after = _machine_cpu()
    used = (busy_after - busy_before) - (idle_after - idle_before)
    output = result.stdout + result.stderr
    tps_match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    done = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    transactions = int(done.group(1)) if done else 0
    run = Run(
        label=label,
        clients=clients,
        tps=float(tps_match.group(1)) if tps_match else 0.0,
        failed=int(failed.group(1)) if failed else -1,
        aborted=result.returncode != 0,
        cpu_ms_per_txn=used * 1000 / transactions if transactions else 0.0,
        pgbouncer_share=(_process_cpu(pooler_pid) - pooler_before) / used if used else 0.0,
        pgbench_share=pgbench_cpu / used if used else 0.0,
        returncode=result.returncode,
        output=output,
    )
    status = f"  ABORTED (exit {result.returncode})" if run.aborted else ""
    print(
        f"  {label:<22} clients {clients:4d}  tps {run.tps:8.1f}  failed {run.failed:3d}  "
        f"cpu/txn {run.cpu_ms_per_txn:5.2f} ms  ({elapsed:.0f}s){status}",
        flush=True,
    )
    return run


RESET_THRESHOLD = 0.10


def with_reset(ini_text: str, *, on: bool) -> str:
    """``ini_text`` with the after-transaction reset switched on or off (nothing else changed)."""
    keys = set(RESET_PARAMETERS)
    lines = [line for line in ini_text.splitlines() if line.split("=", 1)[0].strip() not in keys]
    if on:
        lines += [f"{key} = {value}" for key, value in RESET_PARAMETERS.items()]
    return "\n".join(lines) + "\n"


def reset_variant(build: Path, work: Path, *, on: bool) -> Path:
    """A copy of the rendered stack whose ``pgbouncer.ini`` resets connections (or not)."""
    variant = work / ("build-reset-on" if on else "build-reset-off")
    shutil.copytree(build, variant)
    [ini] = sorted((variant / "files").glob("*/pgbouncer.ini"))
    ini.write_text(with_reset(ini.read_text(), on=on))
    return variant


def reset_cost(args: argparse.Namespace, work: Path, build: Path) -> int:
    """Pooled tps with and without the reset, alternating, ``args.reset_cost`` times each."""
    max_conn = args.max_connections
    variants = {on: reset_variant(build, work, on=on) for on in (False, True)}
    # Both poolers run side by side (no restart between runs): room for both pools.
    settings = {"max_connections": str(3 * max_conn), "shared_buffers": "128MB"}
    tps: dict[tuple[str, bool], list[float]] = {}
    failures = 0
    with (
        running_cluster(tls_only=True, settings=settings) as cluster,
        contextlib.ExitStack() as stack,
    ):
        database = prepare_database(cluster, build)
        _load(cluster, database)
        poolers = {
            on: stack.enter_context(start_pgbouncer(variants[on], cluster)) for on in variants
        }
        for run in range(args.reset_cost):
            for on in (False, True) if run % 2 == 0 else (True, False):
                banner(f"run {run + 1}/{args.reset_cost}: reset {'on' if on else 'off'}")
                pgbouncer = poolers[on]
                pid = pgbouncer.pid
                for request in REQUESTS:
                    script = work / f"{request}.sql"
                    script.write_text(script_text(request))
                    result = pgbench(
                        f"{request} reset {'on' if on else 'off'}",
                        host=pgbouncer.host,
                        port=pgbouncer.port,
                        dbname=f"{database}_rw",
                        clients=10 * max_conn,
                        seconds=args.seconds,
                        script=script,
                        sslmode="disable",
                        pooler_pid=pid,
                    )
                    if result.tps == 0:
                        print(result.output[-2000:], pgbouncer.log()[-2000:], sep="\n")
                    failures += result.failed != 0 or result.aborted or result.tps == 0
                    tps.setdefault((request, on), []).append(result.tps)
    banner("result: cost of server_reset_query_always = 1 (DISCARD ALL after each transaction)")
    costs = []
    for request in REQUESTS:
        off_tps, on_tps = tps[(request, False)], tps[(request, True)]
        cost = 1 - statistics.median(on_tps) / statistics.median(off_tps)
        costs.append(cost)
        print(
            f"{request}: reset off median {statistics.median(off_tps):.0f} tps "
            f"(min {min(off_tps):.0f}, max {max(off_tps):.0f}); reset on median "
            f"{statistics.median(on_tps):.0f} tps (min {min(on_tps):.0f}, "
            f"max {max(on_tps):.0f}); cost {cost:+.1%} (runs: off "
            f"{[round(v) for v in off_tps]}, on {[round(v) for v in on_tps]})"
        )
    worst = max(costs)
    print(
        f"largest median cost {worst:+.1%}: "
        f"{'below' if worst < RESET_THRESHOLD else 'NOT below'} {RESET_THRESHOLD:.0%}; "
        f"{failures} runs with failures"
    )
    return 0 if failures == 0 else 1


def _load(cluster: Any, database: str) -> None:
    with cluster.connect(database) as conn:
        conn.execute(
            "INSERT INTO identity.accounts (sub, display_name) "
            f"SELECT 'bench-' || g, 'Bench ' || g FROM generate_series(0, {ACCOUNTS - 1}) g"
        )
        conn.execute(
            "INSERT INTO content.articles (author_sub, title, body, published) "
            "SELECT 'editor-' || (g % 20), 'Title ' || g, repeat('lorem ipsum ', 40), "
            f"g % 5 <> 0 FROM generate_series(1, {ARTICLES}) g"
        )
        conn.execute("VACUUM ANALYZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="staging", choices=("staging", "prod"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--max-connections", type=int, default=40)
    parser.add_argument(
        "--reset-cost", type=int, default=0, metavar="RUNS", help="measure the reset's cost"
    )
    args = parser.parse_args(argv)
    max_conn = args.max_connections
    if args.reset_cost:
        work = temp_dir("pgplatform-bench-reset-")
        try:
            return reset_cost(args, work, render_stack(args.stack, work / "build"))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    work = temp_dir("pgplatform-bench-pool-")
    results: list[tuple[str, Run, Run, Run, Run, list[str]]] = []
    try:
        build = render_stack(args.stack, work / "build")
        settings = {"max_connections": str(max_conn), "shared_buffers": "128MB"}
        with running_cluster(tls_only=True, settings=settings) as cluster:
            database = prepare_database(cluster, build)
            _load(cluster, database)
            with start_pgbouncer(build, cluster) as pgbouncer:
                ini = ini_sections((Path(pgbouncer.work_dir or ".") / "pgbouncer.ini").read_text())
                pool = ini["pgbouncer"]
                servers = int(pool["default_pool_size"]) + int(pool["reserve_pool_size"])
                banner(
                    f"{args.stack}: PostgreSQL max_connections {max_conn}; rendered PgBouncer "
                    f"default_pool_size {pool['default_pool_size']} + reserve_pool_size "
                    f"{pool['reserve_pool_size']}, max_client_conn {pool['max_client_conn']}, "
                    f"server_tls_sslmode {pool['server_tls_sslmode']}"
                )
                pid = pgbouncer.pid
                for request in REQUESTS:
                    script = work / f"{request}.sql"
                    script.write_text(script_text(request))
                    print(f"request '{request}':", flush=True)
                    direct = [
                        pgbench(
                            "direct (TLS)",
                            host=cluster.host,
                            port=cluster.port,
                            dbname=database,
                            clients=clients,
                            seconds=args.seconds,
                            script=script,
                            sslmode="require",
                        )
                        for clients in sorted({2, 4, 8, servers})
                    ]
                    pooled = pgbench(
                        f"pgbouncer {database}_rw",
                        host=pgbouncer.host,
                        port=pgbouncer.port,
                        dbname=f"{database}_rw",
                        clients=10 * max_conn,
                        seconds=args.seconds,
                        script=script,
                        sslmode="disable",
                        pooler_pid=pid,
                    )
                    overload = pgbench(
                        "direct (TLS), too many",
                        host=cluster.host,
                        port=cluster.port,
                        dbname=database,
                        clients=10 * max_conn,
                        seconds=2,
                        script=script,
                        sslmode="require",
                    )
                    errors = [line for line in pgbouncer.log().splitlines() if " ERROR " in line]
                    best = max(direct, key=lambda r: r.tps)
                    same = next(r for r in direct if r.clients == servers)
                    results.append((request, best, same, pooled, overload, errors))
        ok = True
        banner("result")
        for request, best, same, pooled, overload, errors in results:
            ratio = pooled.tps / best.tps if best.tps else 0.0
            passed = ratio >= TARGET and pooled.failed == 0 and not pooled.aborted and not errors
            ok = ok and passed
            print(
                f"{request}: pooled {pooled.tps:.0f} tps with {pooled.clients} clients, "
                f"{pooled.failed} failed, {len(errors)} PgBouncer errors; best direct "
                f"{best.tps:.0f} tps ({best.clients} clients) -> ratio {ratio:.2f} "
                f"(target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}); "
                f"direct with the pool's {same.clients} connections {same.tps:.0f} tps -> "
                f"{pooled.tps / same.tps if same.tps else 0:.2f}; CPU per transaction "
                f"direct {best.cpu_ms_per_txn:.2f} ms, pooled {pooled.cpu_ms_per_txn:.2f} ms "
                f"(PgBouncer {pooled.pgbouncer_share:.0%} and pgbench {pooled.pgbench_share:.0%} "
                f"of it; pgbench {best.pgbench_share:.0%} direct)"
            )
            refused = re.search(
                r"too many clients|remaining connection slots are reserved", overload.output
            )
            print(
                f"  direct with {overload.clients} clients: "
                + (
                    "refused by PostgreSQL ('too many clients')"
                    if refused
                    else f"failed (pgbench exit {overload.returncode})"
                )
            )
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
