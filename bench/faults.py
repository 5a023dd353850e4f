"""Benchmark: faults under load through the rendered PgBouncer, with a client-side ledger.

    python -m bench.faults [--stack staging] [--clients 8]

A throw-away TLS-only PostgreSQL 15 (``synchronous_commit = on``, as deployed) with the stack's
SQL bundle and example domains, and a real PgBouncer from the stack's rendered files. Clients
run PostgREST's write request (``tests/integration/faults.py``) and record every attempt:
committed, failed before ``COMMIT``, or in doubt (connection lost after ``COMMIT`` was sent).
Faults, one after the other:

1. PostgreSQL restarted in place, fast shutdown, then immediate shutdown;
2. PgBouncer paused (``SIGUSR1``) for 2 s and resumed (``SIGUSR2``);
3. a rolling update step: a new PgBouncer takes the endpoint and the old one gets ``SIGINT``
   (safe shutdown), then, on the next step, ``SIGKILL`` (the end of the grace period);
4. the pool exhausted: more clients holding a long transaction than server connections,
   against the stack rendered with ``pgbouncer.queryWaitTimeout = 6s``.

Printed per fault: outage (fault to server back), recovery (fault to the first client's commit
and to every client's), errors seen by clients by message, in-doubt transactions, and
transactions lost (committed per the ledger, absent in the database). Exits non-zero when a
transaction was lost, a failed one exists anyway, or the clients did not all recover.
Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys

from bench.common import banner, render_stack, temp_dir
from tests.integration.faults import (
    ExhaustionRun,
    FaultRun,
    fault_stack,
    pgbouncer_pause,
    pgbouncer_rollover,
    pgbouncer_version,
    pool_exhaustion,
    postgres_restart,
    render_with_pool_settings,
    termination,
)
from tests.integration.pooler import start_pgbouncer

EXHAUSTION_QUERY_WAIT_TIMEOUT = "6s"


def report(run: FaultRun) -> bool:
    audit = run.audit
    print(
        f"  {run.name:<18} outage {run.outage_s:5.2f}s  recovery first "
        f"{run.recovery_first_s:5.2f}s all {run.recovery_all_s:5.2f}s  committed "
        f"{audit.committed:5d}  failed {audit.failed:3d}  "
        f"in doubt {audit.in_doubt:2d} ({audit.in_doubt_present} committed)  connect errors "
        f"{audit.connect_errors:3d}  LOST {len(audit.lost)}  phantom {len(audit.phantom)}",
        flush=True,
    )
    print(
        f"  {'':<18} in flight at the fault: {run.in_flight_committed} committed, "
        f"{run.in_flight_lost} failed/in doubt; longest committed attempt {run.max_wait_s:.2f}s; "
        f"pgbouncer restarted: {run.pgbouncer_restarted}"
        + (
            f"; old pgbouncer exit code {run.exit_code}"
            if run.name.startswith("pgbouncer-s")
            else ""
        )
    )
    for message, count in sorted(run.audit.errors.items(), key=lambda item: -item[1]):
        print(f"  {'':<18} {count:4d} x {message}")
    return not audit.lost and not audit.phantom and math.isfinite(run.recovery_all_s)


def report_exhaustion(run: ExhaustionRun) -> bool:
    audit = run.audit
    waits = ", ".join(f"{s:.1f}" for s in run.timed_out_after_s)
    print(
        f"  {run.clients} clients holding {run.hold_s:.0f}s transactions, {run.servers} server "
        f"connections (query_wait_timeout {run.query_wait_timeout_s:.0f}s, reserve_pool_timeout "
        f"{run.reserve_pool_timeout_s:.0f}s)\n"
        f"  committed {audit.committed}, failed {audit.failed} after waiting [{waits}] s, "
        f"LOST {len(audit.lost)}, phantom {len(audit.phantom)}\n"
        f"  SHOW POOLS: peak cl_waiting {run.peak_cl_waiting}, peak sv_active "
        f"{run.peak_sv_active}, cl_waiting afterwards {run.cl_waiting_after}; a new "
        f"transaction afterwards took {run.after_commit_s:.3f}s"
    )
    for message, count in sorted(audit.errors.items(), key=lambda item: -item[1]):
        print(f"    {count:4d} x {message}")
    return not audit.lost and not audit.phantom and run.cl_waiting_after == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="staging", choices=("staging", "prod"))
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    work = temp_dir("pgplatform-bench-faults-")
    ok = True
    try:
        build = render_stack(args.stack, work / "build")
        exhaustion_build = render_with_pool_settings(
            args.stack,
            work / "build-exhaustion",
            {"queryWaitTimeout": EXHAUSTION_QUERY_WAIT_TIMEOUT},
        )
        prestop, grace = termination(build)
        major, minor = pgbouncer_version()
        banner(
            f"{args.stack}: PgBouncer {major}.{minor} from the rendered ini, {args.clients} "
            f"clients; pod preStop sleep {prestop}s, terminationGracePeriodSeconds {grace}s"
        )
        with fault_stack(build) as stack:
            for mode in ("fast", "immediate"):
                ok &= report(postgres_restart(stack, mode, clients=args.clients))
            ok &= report(pgbouncer_pause(stack, clients=args.clients))
            for signum in (signal.SIGINT, signal.SIGKILL):
                run = pgbouncer_rollover(
                    stack, signum, grace_s=grace - prestop, clients=args.clients
                )
                ok &= report(run)
            banner("pool exhaustion")
            with start_pgbouncer(exhaustion_build, stack.cluster) as pgbouncer:
                ok &= report_exhaustion(pool_exhaustion(stack.cluster, stack.database, pgbouncer))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nresult: {'no transaction lost, every client recovered' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
