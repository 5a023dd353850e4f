"""Benchmark: how long a schema change takes to reach PostgREST through the reloader sidecar.

    python -m bench.schema_reload [--stack staging] [--samples 6] [--tables 300]

The stack's database tier from its offline render (TLS-only PostgreSQL 15 with the SQL bundle
and example domains, PgBouncer with the rendered ``pgbouncer.ini``), and the rendered sidecar
script of the ``identity`` API run with the container's environment, including its poll
interval, next to a stand-in process named ``postgrest`` that records each ``SIGUSR1``
(``tests/integration/schema_reload.py``).

Measured:
1. the cost of one poll: ``platform.schema_version`` through PgBouncer as the authenticator, on
   the schema with ``--tables`` extra tables of 10 columns each (median and max of 50 calls);
2. per sample, from the COMMIT of a ``CREATE TABLE`` at a random point of the poll cycle to the
   ``SIGUSR1``: the delay the sidecar adds before PostgREST starts its schema cache load.

Target: every sample within the poll interval plus 2 s. PostgREST's own cache load comes on top
(``pgrst_schema_cache_query_time_seconds`` on its admin port; no PostgREST binary runs here).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from bench.common import banner, render_stack, temp_dir
from components.render.domain_api import SCHEMA_RELOADER
from components.render.postgrest import SCHEMA_POLL_ENV
from tests.integration.pooler import running_stack
from tests.integration.schema_reload import reloader_container, running_reloader

SLACK_SECONDS = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="staging", choices=("staging", "prod"))
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--tables", type=int, default=300)
    args = parser.parse_args()

    build = render_stack(args.stack, temp_dir("pgplatform-bench-render-"))
    container = reloader_container(build, "identity")
    interval = int(next(e["value"] for e in container["env"] if e["name"] == SCHEMA_POLL_ENV))
    banner(f"{args.stack}: {SCHEMA_RELOADER} polls every {interval}s")
    with running_stack(args.stack, build) as stack:
        admin = stack.cluster.connect(stack.database)
        columns = ", ".join(f"c{i} text" for i in range(9))
        for n in range(args.tables):
            admin.execute(f"CREATE TABLE identity.bench_{n} (id bigint PRIMARY KEY, {columns})")
        with stack.connect() as conn:
            timings = []
            for _ in range(50):
                started = time.perf_counter()
                conn.execute("SELECT platform.schema_version('identity')").fetchone()
                timings.append((time.perf_counter() - started) * 1000)
        print(
            f"poll query on identity + {args.tables} tables: median "
            f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms",
            flush=True,
        )
        delays: list[float] = []
        with running_reloader(build, stack, "identity") as reloader:
            reloader.wait_for_signals(1, timeout=3 * interval + 10)
            for sample in range(args.samples):
                time.sleep(random.uniform(0, interval))  # noqa: S311 - a phase, not a secret
                admin.execute(f"CREATE TABLE identity.bench_change_{sample} (id bigint)")
                committed = time.time()
                signals = reloader.wait_for_signals(sample + 2, timeout=3 * interval + 10)
                delays.append(signals[sample + 1] - committed)
                print(f"  sample {sample + 1}: SIGUSR1 {delays[-1]:.2f} s after COMMIT", flush=True)
        admin.close()
    bound = interval + SLACK_SECONDS
    print(
        f"change -> SIGUSR1: median {statistics.median(delays):.2f} s, max {max(delays):.2f} s "
        f"(target <= {bound:.0f} s = interval + {SLACK_SECONDS:.0f} s)",
        flush=True,
    )
    return 0 if max(delays) <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
