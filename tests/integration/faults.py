"""Faults under load through the rendered PgBouncer, with a ledger of what clients saw commit.

Shared by the fault tests (which assert the correctness properties) and ``bench/faults.py``
(which prints the numbers). The workload is PostgREST's write request through the pooler, as
the authenticator, one round trip per statement: ``BEGIN``; role + claims + request settings in
one ``set_config`` statement; the pre-request hook; an ``INSERT`` of one article carrying a key
unique to the attempt; ``COMMIT``. Every attempt ends in the ledger as

* ``committed``: ``COMMIT`` returned success; the row must exist afterwards, whatever happened;
* ``failed``: an error before ``COMMIT`` was sent; the row must not exist;
* ``in_doubt``: the connection broke after ``COMMIT`` was sent and before its answer (a client
  cannot know the outcome; PostgREST answers 503 and the caller retries or checks).

A client whose connection breaks opens a new one, as PostgREST's pool does. Faults (restarts,
signals) are always sent from the main thread: the servers are started with a parent-death
signal, which Linux ties to the thread that started them.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
import yaml

from tests.integration.pg import PgCluster, connect, running_cluster
from tests.integration.pgbouncer import PgBouncerProcess
from tests.integration.pooler import (
    PASSWORDS,
    container,
    prepare_database,
    rendered_deployment,
    start_pgbouncer,
)
from tests.tooling import require_tool
from tools.render import ROOT, render_in_subprocess

CLIENT_USER: Final = "postgrest"
STATS_USER: Final = "pgbouncer_exporter"
KEY_PREFIX: Final = "fault-"
RECONNECT_PAUSE_S: Final = 0.05
_SETUP: Final = (
    "SELECT set_config('role', 'api_editor', true), "
    "set_config('request.jwt.claims', %s, true), "
    "set_config('request.method', 'POST', true), "
    "set_config('request.path', '/articles', true)"
)
_INSERT: Final = "INSERT INTO content.articles (title) VALUES (%s) RETURNING id"

Status = Literal["committed", "failed", "in_doubt"]


@dataclass(frozen=True)
class Attempt:
    """One transaction a client tried, and what it saw."""

    client: int
    key: str
    started: float
    ended: float
    status: Status
    error: str = ""


@dataclass
class Ledger:
    """Every attempt of every client (appends are atomic under the GIL)."""

    attempts: list[Attempt] = field(default_factory=list)
    connect_errors: list[tuple[float, str]] = field(default_factory=list)

    def with_status(self, status: Status) -> list[Attempt]:
        return [a for a in self.attempts if a.status == status]

    def keys(self, status: Status) -> set[str]:
        return {a.key for a in self.with_status(status)}


class Endpoint:
    """Where clients connect: one pooler address, switched as Service endpoints are."""

    def __init__(self, pgbouncer: PgBouncerProcess) -> None:
        self._lock = threading.Lock()
        self._address = (pgbouncer.host, pgbouncer.port)

    def switch(self, pgbouncer: PgBouncerProcess) -> None:
        with self._lock:
            self._address = (pgbouncer.host, pgbouncer.port)

    @property
    def address(self) -> tuple[str, int]:
        with self._lock:
            return self._address


class Workload:
    """``clients`` threads running write requests against ``endpoint`` until stopped.

    ``hold_s`` keeps each transaction open that long (``pg_sleep`` before ``COMMIT``) to make
    transactions in flight when a fault hits, or to exhaust the pool (only the first
    ``holders`` clients hold); ``pause_s`` spaces one client's requests so that the load stays
    light on a shared machine; ``once``: each client makes one attempt and ends.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        pool: str,
        *,
        clients: int,
        run: str,
        hold_s: float = 0.0,
        pause_s: float = 0.005,
        holders: int | None = None,
        once: bool = False,
        ledger: Ledger | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.pool = pool
        self.clients = clients
        self.run = run
        self.hold_s = hold_s
        self.pause_s = pause_s
        self.holders = clients if holders is None else holders
        self.once = once
        self.ledger = ledger if ledger is not None else Ledger()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Workload:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def finished(self) -> bool:
        """Every client has returned (``once`` workloads end by themselves)."""
        return all(not t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 30) -> None:
        """Stop after each client's current attempt; fail if one does not end in ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in self._threads if t.is_alive()]
        if hung:
            raise AssertionError(f"clients still blocked {timeout}s after stop: {hung}")

    def _connect(self) -> psycopg.Connection[Any]:
        host, port = self.endpoint.address
        conn = connect(
            host=host,
            port=port,
            user=CLIENT_USER,
            password=PASSWORDS[CLIENT_USER],
            dbname=self.pool,
        )
        conn.prepare_threshold = None  # transaction pooling: no server-side prepared statements
        return conn

    def _client(self, index: int) -> None:
        conn: psycopg.Connection[Any] | None = None
        sequence = 0
        claims = json.dumps({"role": "api_editor", "sub": f"{KEY_PREFIX}{self.run}-{index}"})
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = self._connect()
                except psycopg.Error as error:
                    self.ledger.connect_errors.append((time.monotonic(), _first_line(error)))
                    if self.once:
                        return
                    time.sleep(RECONNECT_PAUSE_S)
                    continue
            sequence += 1
            key = f"{KEY_PREFIX}{self.run}-{index}-{sequence}"
            started = time.monotonic()
            committing = False
            try:
                conn.execute("BEGIN")
                conn.execute(_SETUP, (claims,))
                conn.execute("SELECT platform.pre_request()")
                conn.execute(_INSERT, (key,))
                if self.hold_s and index < self.holders:
                    conn.execute("SELECT pg_sleep(%s)", (self.hold_s,))
                committing = True
                conn.execute("COMMIT")
            except psycopg.Error as error:
                status: Status = "in_doubt" if committing else "failed"
                self.ledger.attempts.append(
                    Attempt(index, key, started, time.monotonic(), status, _first_line(error))
                )
                with contextlib.suppress(psycopg.Error):
                    conn.close()
                conn = None
                if self.once:
                    return
                time.sleep(RECONNECT_PAUSE_S)
                continue
            self.ledger.attempts.append(Attempt(index, key, started, time.monotonic(), "committed"))
            if self.once:
                break
            if self.pause_s:
                time.sleep(self.pause_s)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


@contextlib.contextmanager
def running_workload(workload: Workload, *, stop_timeout: float = 30) -> Iterator[Workload]:
    workload.start()
    try:
        yield workload
    finally:
        workload.stop(stop_timeout)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def wait_for(condition: Callable[[], bool], *, timeout: float, step: float = 0.05) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds passed (bounded waits only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def committed_after(ledger: Ledger, moment: float, clients: int) -> bool:
    """Every client has seen a commit after ``moment``."""
    done = {a.client for a in ledger.attempts if a.status == "committed" and a.ended > moment}
    return len(done) == clients


@dataclass(frozen=True)
class Audit:
    """The ledger against the database."""

    committed: int
    failed: int
    in_doubt: int
    connect_errors: int
    lost: list[str]
    """Keys a client saw commit that the database does not have (must be empty)."""
    phantom: list[str]
    """Keys the database has although their client saw the transaction fail (must be empty)."""
    in_doubt_present: int
    errors: dict[str, int]
    """Distinct error messages clients saw, with counts."""


def audit(cluster: PgCluster, database: str, ledger: Ledger, run: str) -> Audit:
    """Compare the ledger of ``run`` with the rows that exist (read as superuser, not via RLS)."""
    with cluster.connect(database) as conn:
        rows = conn.execute(
            "SELECT title FROM content.articles WHERE title LIKE %s",
            (f"{KEY_PREFIX}{run}-%",),
        ).fetchall()
    present = {title for (title,) in rows}
    committed = ledger.keys("committed")
    failed = ledger.keys("failed")
    in_doubt = ledger.keys("in_doubt")
    errors: dict[str, int] = {}
    for attempt in ledger.attempts:
        if attempt.error:
            message = _normalise(attempt.error)
            errors[message] = errors.get(message, 0) + 1
    for _, message in ledger.connect_errors:
        key = f"connect: {_normalise(message)}"
        errors[key] = errors.get(key, 0) + 1
    return Audit(
        committed=len(committed),
        failed=len(failed),
        in_doubt=len(in_doubt),
        connect_errors=len(ledger.connect_errors),
        lost=sorted(committed - present),
        phantom=sorted(failed & present),
        in_doubt_present=len(in_doubt & present),
        errors=errors,
    )


_VOLATILE = re.compile(r"(port \d+|\d+\.\d+\.\d+\.\d+|pid \d+|\"[^\"]*\")")


def _normalise(message: str) -> str:
    return _VOLATILE.sub("…", message)


def recovery_seconds(ledger: Ledger, moment: float) -> tuple[float, float]:
    """(first, last): seconds from ``moment`` to the first commit any client saw after it, and
    to the moment the last client saw one. ``inf`` when one never did."""
    firsts: dict[int, float] = {}
    for attempt in ledger.with_status("committed"):
        if attempt.ended > moment:
            firsts[attempt.client] = min(firsts.get(attempt.client, float("inf")), attempt.ended)
    clients = {a.client for a in ledger.attempts}
    if not firsts or len(firsts) < len(clients):
        return (min(firsts.values(), default=float("inf")) - moment, float("inf"))
    return (min(firsts.values()) - moment, max(firsts.values()) - moment)


def pools(pgbouncer: PgBouncerProcess, pool: str) -> dict[str, Any]:
    """``SHOW POOLS`` row of ``pool`` for the client login, as the metrics exporter reads it."""
    with pgbouncer.connect(STATS_USER, PASSWORDS[STATS_USER], "pgbouncer") as console:
        cursor = console.execute("SHOW POOLS")
        names = [c.name for c in cursor.description or []]
        for row in cursor.fetchall():
            values = dict(zip(names, row, strict=True))
            if values["database"] == pool and values["user"] == CLIENT_USER:
                return values
    return {"cl_waiting": 0, "cl_active": 0, "sv_active": 0}


def effective_config(pgbouncer: PgBouncerProcess) -> dict[str, str]:
    """``SHOW CONFIG``: the values the running PgBouncer uses, defaults included."""
    with pgbouncer.connect(STATS_USER, PASSWORDS[STATS_USER], "pgbouncer") as console:
        return {str(row[0]): str(row[1]) for row in console.execute("SHOW CONFIG").fetchall()}


def pgbouncer_version() -> tuple[int, int]:
    """Major and minor version of the local ``pgbouncer``."""
    output = subprocess.run(
        [require_tool("pgbouncer", "pgbouncer"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    found = re.search(r"PgBouncer (\d+)\.(\d+)", output)
    if found is None:
        raise RuntimeError(f"unexpected pgbouncer --version output: {output!r}")
    return int(found.group(1)), int(found.group(2))


# -- scenarios ---------------------------------------------------------------------------------
RECOVERY_BOUND_S: Final = 60.0
"""Generous bound on every wait for recovery: the tests fail past it, the bench reports."""
WARMUP_COMMITS: Final = 20
HOLDERS: Final = 2
HOLD_S: Final = 1.0
"""``HOLDERS`` of the clients keep each transaction open ``HOLD_S``: some are in flight when
a fault hits."""


@dataclass
class FaultStack:
    """A running database tier: PostgreSQL, the current PgBouncer and the clients' endpoint."""

    cluster: PgCluster
    database: str
    pgbouncer: PgBouncerProcess
    endpoint: Endpoint
    new_pgbouncer: Callable[[], PgBouncerProcess]
    """Start another PgBouncer from the same rendered files (the next pod of a rollout)."""

    @property
    def pool(self) -> str:
        return f"{self.database}_rw"


@dataclass(frozen=True)
class FaultRun:
    """What one fault did to the clients."""

    name: str
    audit: Audit
    outage_s: float
    """Fault to server back (PostgreSQL ready, pooler resumed, old pooler gone)."""
    recovery_first_s: float
    recovery_all_s: float
    """Fault to the first commit of any client / of the last client after the server is back."""
    in_flight_committed: int
    """Transactions open when the fault hit that committed."""
    in_flight_lost: int
    """Transactions open when the fault hit that failed or ended in doubt."""
    pgbouncer_restarted: bool
    exit_code: int | None = None
    max_wait_s: float = 0.0
    """Longest any committed attempt took (clients waiting, not failing)."""


def _warm_up(ledger: Ledger) -> None:
    if not wait_for(lambda: len(ledger.with_status("committed")) >= WARMUP_COMMITS, timeout=30):
        raise AssertionError(f"no load before the fault: {ledger.attempts[-5:]}")


def _run(
    stack: FaultStack,
    name: str,
    ledger: Ledger,
    fault: float,
    back: float,
    *,
    pid: int | None,
    exit_code: int | None = None,
) -> FaultRun:
    first, last = recovery_seconds(ledger, back)
    in_flight = [a for a in ledger.attempts if a.started < fault < a.ended]
    return FaultRun(
        name=name,
        audit=audit(stack.cluster, stack.database, ledger, name),
        outage_s=back - fault,
        recovery_first_s=back - fault + first,
        recovery_all_s=back - fault + last,
        in_flight_committed=sum(a.status == "committed" for a in in_flight),
        in_flight_lost=sum(a.status != "committed" for a in in_flight),
        pgbouncer_restarted=stack.pgbouncer.pid != pid or stack.pgbouncer.wait_exit(0) is not None,
        exit_code=exit_code,
        max_wait_s=max((a.ended - a.started for a in ledger.with_status("committed")), default=0),
    )


def _fault_under_load(
    stack: FaultStack, name: str, clients: int, fault: Callable[[], int | None]
) -> FaultRun:
    """Run the write load, apply ``fault`` once it flows, wait until every client commits."""
    pid = stack.pgbouncer.pid
    workload = Workload(
        stack.endpoint, stack.pool, clients=clients, run=name, holders=HOLDERS, hold_s=HOLD_S
    )
    with running_workload(workload):
        _warm_up(ledger := workload.ledger)
        started = time.monotonic()
        exit_code = fault()
        back = time.monotonic()
        wait_for(lambda: committed_after(ledger, back, clients), timeout=RECOVERY_BOUND_S)
        time.sleep(0.3)
    return _run(stack, name, ledger, started, back, pid=pid, exit_code=exit_code)


def postgres_restart(stack: FaultStack, mode: str, *, clients: int = 8) -> FaultRun:
    """Restart PostgreSQL (``fast`` or ``immediate`` shutdown) under load; PgBouncer stays."""

    def fault() -> None:
        stack.cluster.restart(mode)

    return _fault_under_load(stack, f"pg-{mode}", clients, fault)


def pgbouncer_pause(stack: FaultStack, *, clients: int = 8, pause_s: float = 2.0) -> FaultRun:
    """``SIGUSR1`` (PAUSE) under load, ``pause_s`` later ``SIGUSR2`` (RESUME)."""

    def fault() -> None:
        stack.pgbouncer.send_signal(signal.SIGUSR1)
        time.sleep(pause_s)
        stack.pgbouncer.send_signal(signal.SIGUSR2)

    return _fault_under_load(stack, "pgbouncer-pause", clients, fault)


def pgbouncer_rollover(
    stack: FaultStack, signum: int, *, grace_s: float, clients: int = 8
) -> FaultRun:
    """One step of a rolling update: a new PgBouncer takes the endpoint, the old one gets
    ``signum`` and ``grace_s`` to exit (then SIGKILL, as the kubelet does)."""
    old, new = stack.pgbouncer, stack.new_pgbouncer()

    def fault() -> int | None:
        stack.endpoint.switch(new)  # the preStop sleep: endpoints drop the terminating pod
        old.send_signal(signum)
        exit_code = old.wait_exit(grace_s)
        if exit_code is None:
            old.send_signal(signal.SIGKILL)
            old.wait_exit(10)
        stack.pgbouncer = new
        return exit_code

    name = f"pgbouncer-{signal.Signals(signum).name.lower()}"
    try:
        return _fault_under_load(stack, name, clients, fault)
    finally:
        old.stop()


@dataclass(frozen=True)
class ExhaustionRun:
    """More long transactions than server connections, against one pooler."""

    audit: Audit
    servers: int
    clients: int
    query_wait_timeout_s: float
    reserve_pool_timeout_s: float
    hold_s: float
    peak_cl_waiting: int
    peak_sv_active: int
    cl_waiting_after: int
    timed_out_after_s: list[float]
    """How long each client that failed had waited."""
    after_commit_s: float
    """Duration of a fresh transaction once the long ones ended (inf: it failed)."""


def pool_exhaustion(
    cluster: PgCluster, database: str, pgbouncer: PgBouncerProcess, *, extra: int = 4
) -> ExhaustionRun:
    """``servers + extra`` clients each hold one transaction longer than query_wait_timeout."""
    config = effective_config(pgbouncer)
    pool = f"{database}_rw"
    servers = int(config["default_pool_size"]) + int(config["reserve_pool_size"])
    wait_timeout = float(config["query_wait_timeout"])
    reserve_timeout = float(config["reserve_pool_timeout"])
    hold = wait_timeout + 2
    endpoint = Endpoint(pgbouncer)
    name = "pool-exhaustion"
    workload = Workload(endpoint, pool, clients=servers + extra, run=name, hold_s=hold, once=True)
    peak_waiting = peak_active = 0
    with running_workload(workload):
        deadline = time.monotonic() + reserve_timeout + 2 * hold + RECOVERY_BOUND_S
        while not workload.finished() and time.monotonic() < deadline:
            row = pools(pgbouncer, pool)
            peak_waiting = max(peak_waiting, int(row["cl_waiting"]))
            peak_active = max(peak_active, int(row["sv_active"]))
            time.sleep(0.2)
    waiting_after = int(pools(pgbouncer, pool)["cl_waiting"])
    ledger = workload.ledger
    probe = Workload(endpoint, pool, clients=1, run="pool-probe", once=True)
    with running_workload(probe):
        wait_for(probe.finished, timeout=RECOVERY_BOUND_S)
    after = probe.ledger.with_status("committed")
    return ExhaustionRun(
        audit=audit(cluster, database, ledger, name),
        servers=servers,
        clients=servers + extra,
        query_wait_timeout_s=wait_timeout,
        reserve_pool_timeout_s=reserve_timeout,
        hold_s=hold,
        peak_cl_waiting=peak_waiting,
        peak_sv_active=peak_active,
        cl_waiting_after=waiting_after,
        timed_out_after_s=sorted(a.ended - a.started for a in ledger.with_status("failed")),
        after_commit_s=(after[0].ended - after[0].started) if after else float("inf"),
    )


# -- set-up ------------------------------------------------------------------------------------
SETTINGS: Final = {"synchronous_commit": "on", "max_connections": "40"}
"""Commits are durable as in the deployed database (the test clusters default to
``synchronous_commit = off``, which an immediate shutdown may legitimately lose)."""


@contextlib.contextmanager
def fault_stack(build: Path) -> Iterator[FaultStack]:
    """TLS-only PostgreSQL with the stack's SQL and a PgBouncer from the rendered files."""
    with (
        contextlib.ExitStack() as stack,
        running_cluster(tls_only=True, settings=SETTINGS) as cluster,
    ):
        database = prepare_database(cluster, build)

        def new_pgbouncer() -> PgBouncerProcess:
            return stack.enter_context(start_pgbouncer(build, cluster))

        pgbouncer = new_pgbouncer()
        yield FaultStack(
            cluster=cluster,
            database=database,
            pgbouncer=pgbouncer,
            endpoint=Endpoint(pgbouncer),
            new_pgbouncer=new_pgbouncer,
        )


def termination(build: Path) -> tuple[int, int]:
    """(preStop sleep, terminationGracePeriodSeconds) of the rendered PgBouncer pod."""
    pod = rendered_deployment(build)["spec"]["template"]["spec"]
    pgbouncer = container(pod, "pgbouncer")
    return (
        int(pgbouncer["lifecycle"]["preStop"]["sleep"]["seconds"]),
        int(pod["terminationGracePeriodSeconds"]),
    )


def render_with_pool_settings(stack: str, out: Path, settings: dict[str, Any]) -> Path:
    """The stack rendered with ``pgbouncer`` config keys overridden (e.g. queryWaitTimeout)."""
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(stack_file.read_text())
    key = "pgplatform:pgbouncer"
    document["config"][key] = {**(document["config"].get(key) or {}), **settings}
    out.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}-Pulumi.{stack}.yaml"
    config.write_text(yaml.safe_dump(document))
    result = render_in_subprocess(stack, out, config)
    if result.returncode != 0:
        raise RuntimeError(f"render of {stack} failed:\n{result.stdout}{result.stderr}")
    return out
