"""Faults under load through the rendered PgBouncer: no transaction a client saw commit is lost.

Clients run PostgREST's write request through a real PgBouncer started from the stack's
rendered files while PostgreSQL restarts, PgBouncer pauses or rolls over as in a rolling
update, or the pool runs out of server connections; a ledger of every attempt is then compared
with the database (``tests/integration/faults.py``). The numbers (outage, recovery seconds,
errors) are measured and printed by ``bench/faults.py``; here only generous bounds apply.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.faults import (
    KEY_PREFIX,
    Attempt,
    FaultRun,
    FaultStack,
    Ledger,
    audit,
    fault_stack,
    pgbouncer_pause,
    pgbouncer_rollover,
    pool_exhaustion,
    postgres_restart,
    render_with_pool_settings,
    termination,
)
from tests.integration.pooler import start_pgbouncer

pytestmark = pytest.mark.integration

QUERY_WAIT_TIMEOUT_S = 6
"""Above PgBouncer's reserve_pool_timeout (5 s), so that the reserve pool joins in."""


@pytest.fixture(scope="module")
def build(rendered_stack: Callable[[str], Path]) -> Path:
    return rendered_stack("staging")


@pytest.fixture(scope="module")
def stack(build: Path) -> Iterator[FaultStack]:
    with fault_stack(build) as running:
        yield running


def assert_nothing_lost(run: FaultRun) -> None:
    audit = run.audit
    assert audit.lost == [], f"{run.name}: committed per the client, absent: {audit.lost[:5]}"
    assert audit.phantom == [], f"{run.name}: failed per the client, present: {audit.phantom[:5]}"
    assert math.isfinite(run.recovery_all_s), f"{run.name}: a client never recovered: {audit}"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_loses_nothing_and_pgbouncer_reconnects(
    stack: FaultStack, mode: str
) -> None:
    run = postgres_restart(stack, mode)
    assert_nothing_lost(run)
    assert not run.pgbouncer_restarted, "PgBouncer had to be restarted"
    # Clients saw errors (the open transactions died with the server), each a clean message.
    assert run.audit.failed + run.audit.in_doubt > 0
    assert all(message.strip() for message in run.audit.errors)


def test_pgbouncer_pause_and_resume_makes_clients_wait_not_fail(stack: FaultStack) -> None:
    run = pgbouncer_pause(stack, pause_s=2.0)
    assert_nothing_lost(run)
    assert (run.audit.failed, run.audit.in_doubt, run.audit.connect_errors) == (0, 0, 0)
    assert run.in_flight_committed > 0
    assert run.in_flight_lost == 0
    assert run.max_wait_s >= 1.5, "clients waited through the pause"


def test_rolling_update_safe_shutdown_finishes_in_flight_transactions(
    stack: FaultStack, build: Path
) -> None:
    prestop, grace = termination(build)
    run = pgbouncer_rollover(stack, signal.SIGINT, grace_s=grace - prestop)
    assert run.exit_code == 0, "the old PgBouncer did not exit by itself within the grace period"
    assert_nothing_lost(run)
    assert run.in_flight_committed > 0
    assert run.in_flight_lost == 0
    assert run.audit.in_doubt == 0
    # Clients still connected to the old instance fail once, cleanly, and go to the new one.
    assert set(run.audit.errors) <= {
        "consuming input failed: server closed the connection unexpectedly"
    }


def test_rolling_update_hard_stop_at_grace_end_loses_nothing(stack: FaultStack) -> None:
    run = pgbouncer_rollover(stack, signal.SIGKILL, grace_s=10)
    assert run.exit_code == -signal.SIGKILL
    assert_nothing_lost(run)


def test_exhausted_pool_times_out_waiting_clients_and_recovers(
    stack: FaultStack, tmp_path: Path
) -> None:
    build = render_with_pool_settings(
        "staging", tmp_path / "build", {"queryWaitTimeout": f"{QUERY_WAIT_TIMEOUT_S}s"}
    )
    with start_pgbouncer(build, stack.cluster) as pgbouncer:
        run = pool_exhaustion(stack.cluster, stack.database, pgbouncer)
    assert run.query_wait_timeout_s == QUERY_WAIT_TIMEOUT_S, "the configured value is used"
    assert run.reserve_pool_timeout_s < QUERY_WAIT_TIMEOUT_S
    assert run.audit.lost == []
    assert run.audit.phantom == []
    # The server connections (pool + reserve) serve one client each; the rest time out.
    assert run.peak_sv_active == run.servers
    assert run.audit.committed == run.servers
    assert run.audit.failed == run.clients - run.servers
    assert set(run.audit.errors) == {"query_wait_timeout"}
    assert all(
        QUERY_WAIT_TIMEOUT_S - 0.5 <= waited < run.hold_s for waited in run.timed_out_after_s
    )
    # The signal of the PgBouncerClientsWaiting alert rose, and fell back by itself.
    assert run.peak_cl_waiting >= run.clients - run.servers
    assert run.cl_waiting_after == 0
    assert math.isfinite(run.after_commit_s)


def test_audit_reports_a_lost_commit_and_a_phantom_failure(stack: FaultStack) -> None:
    """The ledger check itself: a commit the database lacks and a failure it has are caught."""
    now = time.monotonic()
    ledger = Ledger(
        attempts=[
            Attempt(0, f"{KEY_PREFIX}audit-0-1", now, now, "committed"),
            Attempt(0, f"{KEY_PREFIX}audit-0-2", now, now, "committed"),
            Attempt(0, f"{KEY_PREFIX}audit-0-3", now, now, "failed", "boom"),
        ]
    )
    with stack.cluster.connect(stack.database) as conn:
        conn.execute(
            "INSERT INTO content.articles (author_sub, title) VALUES ('audit', %s), ('audit', %s)",
            (f"{KEY_PREFIX}audit-0-1", f"{KEY_PREFIX}audit-0-3"),
        )
    result = audit(stack.cluster, stack.database, ledger, "audit")
    assert result.lost == [f"{KEY_PREFIX}audit-0-2"]
    assert result.phantom == [f"{KEY_PREFIX}audit-0-3"]
    assert result.errors == {"boom": 1}
