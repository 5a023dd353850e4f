"""Backups and point-in-time recovery for real, from the rendered ``ObjectStore``.

A throw-away PostgreSQL 15 archives its WAL through Barman Cloud to a local S3 server, with the
command lines derived from the ObjectStore the prod stack renders (bucket and prefix, server
name, compression, jobs, credentials' keys, retention; only ``endpointURL`` is pointed at the
local server). Then: a base backup, more writes, a restore to a timestamp and one to the latest
point, each started as a real PostgreSQL that replays the archived WAL, and the retention policy
applied by ``barman-cloud-backup-delete``. Finally the restore check's own rendered script runs
against this archive, only its ``kubectl`` answering "create the recovery Cluster" by starting a
server from the latest backup: it passes, and fails when a WAL segment is missing from the
bucket. See ``tests/integration/barman_cloud.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from components import inputs
from components.render import restore_check
from components.settings import StackSettings, decode_config_value, parse_settings
from tests.conftest import stack_config
from tests.integration.alert_feed import (
    AlertProbe,
    RestoreCheckRun,
    Series,
    plugin_recovery_window,
    restore_check_job_status,
)
from tests.integration.barman_cloud import (
    FIELDS,
    BarmanCloud,
    MotoS3,
    WalRelay,
    leaf_paths,
    retention_policy,
)
from tests.integration.pg import (
    LOOPBACK,
    PG_BIN,
    PgCluster,
    connect,
    free_port,
    give_to_server_user,
    spawn_server,
    stop_server,
)
from tests.integration.rendered import rendered_rule_specs

pytestmark = pytest.mark.integration

SERVER = inputs.CLUSTER_NAME
"""The plugin archives under the Cluster's name (no ``serverName`` parameter is rendered)."""


def prod_settings() -> StackSettings:
    config, secrets = stack_config("prod")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    return parse_settings("prod", raw, [k.split(":", 1)[1] for k in secrets])


PROD = prod_settings()
DATABASE = PROD.postgres.database
CHECKED_SCHEMAS = inputs.restore_check_input(PROD).schemas  # type: ignore[union-attr]
"""What the restore check's query expects in the restored database (prod's schemas)."""
SECRET_VALUES = {"ACCESS_KEY_ID": "local-access-key", "ACCESS_SECRET_KEY": "local-secret-key"}


THRESHOLDS = PROD.observability.alerts


def rendered_manifest(build: Path, kind: str, name: str) -> dict[str, Any]:
    path = build / "manifests" / f"{kind.lower()}_{name}.yaml"
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    assert manifest["kind"] == kind, path
    return manifest


def alert(build: Path, name: str, tmp_path: Path) -> AlertProbe:
    """One of the prod stack's rendered alerts, evaluated by promtool in ``tmp_path``."""
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    return AlertProbe(rendered_rule_specs(build), name, workdir)


def recovery_window(archive: Archive, build: Path) -> list[Series]:
    """The plugin's metrics for the bucket's catalogue, labelled like the primary's scrape."""
    cluster = rendered_manifest(build, "Cluster", SERVER)["metadata"]
    return plugin_recovery_window(
        archive.barman.backups(), namespace=cluster["namespace"], pod=f"{cluster['name']}-1"
    )


def rendered_object_store(build: Path) -> dict[str, Any]:
    (path,) = (build / "manifests").glob("objectstore_*.yaml")
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    return manifest


@dataclass
class Archive:
    """The running setup: the local S3, the tools' command lines, the relay, the primary."""

    s3: MotoS3
    barman: BarmanCloud
    relay: WalRelay
    primary: PgCluster
    spec: dict[str, Any]

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.primary.connect(DATABASE) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def switch_and_wait(self, timeout: float = 60) -> str:
        """Close the current WAL segment and wait until it is in the bucket."""
        ((segment,),) = self.sql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ((last,),) = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")
            if last is not None and last >= segment:
                return str(segment)
            time.sleep(0.1)
        raise AssertionError(f"{segment} not archived; failures: {self.relay.archive_failures}")

    def base_backup(self) -> str:
        # The rendered flags ask for no immediate checkpoint (neither does the nightly backup):
        # the backup's spread checkpoint paces the writes of the dirty buffers over
        # checkpoint_completion_target of checkpoint_timeout, about 100 s on a fresh cluster.
        # Writing them first leaves it nothing to pace; the flags under test stay as rendered.
        self.sql("CHECKPOINT")
        self.barman.run(
            "barman-cloud-backup",
            flags=[
                *self.barman.backup_flags,
                "--host",
                str(self.primary.socket_dir),
                "--port",
                str(self.primary.port),
                "--user",
                self.primary.superuser,
            ],
            env={"PGPASSWORD": self.primary.superuser_password},
            timeout=300,
        )
        return str(self.barman.backups()[-1]["backup_id"])

    def objects(self, part: str) -> list[str]:
        bucket, _, prefix = self.barman.url.removeprefix("s3://").partition("/")
        listing = self.s3.client().list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/{SERVER}/{part}/"
        )
        return [str(o["Key"]) for o in listing.get("Contents", [])]


@pytest.fixture(scope="module")
def archive(rendered_stack: Callable[[str], Path]) -> Iterator[Archive]:
    manifest = rendered_object_store(rendered_stack("prod"))
    spec = manifest["spec"]
    bucket = spec["configuration"]["destinationPath"].removeprefix("s3://").split("/", 1)[0]
    secret = spec["configuration"]["s3Credentials"]["accessKeyId"]["name"]
    with MotoS3(bucket=bucket) as s3:
        local = {**spec, "configuration": {**spec["configuration"], "endpointURL": s3.endpoint}}
        barman = BarmanCloud.from_object_store(
            local, server=SERVER, secrets={secret: SECRET_VALUES}
        )
        with WalRelay(barman) as relay:
            settings = {
                "wal_level": "replica",
                "full_page_writes": "on",
                "archive_mode": "on",
                "archive_command": relay.command("archive"),
            }
            with PgCluster(settings=settings) as primary:
                primary.create_database(DATABASE)
                yield Archive(s3=s3, barman=barman, relay=relay, primary=primary, spec=spec)


@dataclass(frozen=True)
class History:
    """Rows committed before the base backup, between it and the target time, and after it."""

    backup_id: str
    target: datetime.datetime
    before: int
    until_target: int
    after: int


@pytest.fixture(scope="module")
def history(archive: Archive) -> History:
    for schema in CHECKED_SCHEMAS:
        archive.sql(f"CREATE SCHEMA {schema}")
        archive.sql(f"CREATE TABLE {schema}.item AS SELECT g AS id FROM generate_series(1, 20) g")
    archive.sql("CREATE TABLE ledger (id serial PRIMARY KEY, phase text NOT NULL)")
    archive.sql("INSERT INTO ledger (phase) SELECT 'before' FROM generate_series(1, 100)")
    backup_id = archive.base_backup()
    archive.sql("INSERT INTO ledger (phase) SELECT 'until-target' FROM generate_series(1, 50)")
    ((target,),) = archive.sql("SELECT clock_timestamp()")
    time.sleep(0.5)
    archive.sql("INSERT INTO ledger (phase) SELECT 'after' FROM generate_series(1, 25)")
    archive.switch_and_wait()
    return History(backup_id=backup_id, target=target, before=100, until_target=50, after=25)


class RestoredServer:
    """A PostgreSQL started from a backup restored out of the bucket, replaying archived WAL.

    Set up like the restore check's recovery Cluster: it reads the archive (``restore_command``
    through the relay) and never writes to it (``archive_mode`` off). ``start`` returns at once;
    ``wait`` blocks until recovery ended and the server was promoted, ``failed`` tells whether
    the server gave up (a WAL segment it needs is missing).
    """

    def __init__(
        self, archive: Archive, backup_id: str, target: datetime.datetime | None = None
    ) -> None:
        self.archive = archive
        self.backup_id = backup_id
        self.target = target
        self.base = Path(tempfile.mkdtemp(prefix="pgplatform-restore-"))
        self.port = free_port()
        self.server: Any = None

    def start(self) -> RestoredServer:
        data = self.base / "data"
        self.archive.barman.run("barman-cloud-restore", self.backup_id, str(data), timeout=300)
        for path in (self.base, *self.base.rglob("*")):
            give_to_server_user(path)
        self.base.chmod(0o700)
        data.chmod(0o700)
        recovery = {
            "port": str(self.port),
            "listen_addresses": f"'{LOOPBACK}'",
            "unix_socket_directories": f"'{self.base}'",
            "archive_mode": "off",
            "restore_command": self.archive.relay.command("restore"),
            "recovery_target_action": "'promote'",
        }
        if self.target is not None:
            recovery["recovery_target_time"] = f"'{self.target.isoformat()}'"
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in recovery.items()))
        (data / "recovery.signal").touch()
        give_to_server_user(data / "recovery.signal")
        self.server = spawn_server(
            [str(PG_BIN / "postgres"), "-D", str(data)],
            self.base / "server.log",
            stop_signal=signal.SIGINT,
        )
        return self

    def connect(self) -> psycopg.Connection[Any]:
        return connect(
            host=str(self.base),
            port=self.port,
            user="postgres",
            password=self.archive.primary.superuser_password,
            dbname=DATABASE,
            autocommit=True,
        )

    @property
    def failed(self) -> bool:
        return self.server is None or self.server.poll() is not None

    def promoted(self) -> bool:
        """True once the server accepts connections and has left recovery."""
        with contextlib.suppress(psycopg.OperationalError), self.connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False
        return False

    def wait(self, timeout: float = 180) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.failed:
            if self.promoted():
                return self.connect()
            time.sleep(0.2)
        raise AssertionError(f"the restored server did not finish recovery:\n{self.log()}")

    def log(self) -> str:
        path = self.base / "server.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server, stop_signal=signal.SIGINT)
            self.server = None
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def restored(
    archive: Archive, backup_id: str, target: datetime.datetime | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """Restore ``backup_id`` into a new data directory, replay WAL, yield a connection."""
    server = RestoredServer(archive, backup_id, target)
    try:
        with server.start().wait() as conn:
            yield conn
    finally:
        server.stop()


def phases(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT phase, count(*) FROM ledger GROUP BY phase").fetchall()
    return {str(phase): int(count) for phase, count in rows}


def test_every_rendered_field_has_a_mapping(rendered_stack: Callable[[str], Path]) -> None:
    spec = rendered_object_store(rendered_stack("prod"))["spec"]
    assert set(leaf_paths(spec)) <= FIELDS.keys()
    extra = {**spec, "configuration": {**spec["configuration"], "tags": {"team": "db"}}}
    with pytest.raises(ValueError, match=r"configuration\.tags\.team"):
        BarmanCloud.from_object_store(extra, server=SERVER, secrets={})


def test_rendered_settings_become_the_tools_flags(archive: Archive) -> None:
    conf = archive.spec["configuration"]
    assert conf["wal"]["compression"] == "gzip"
    assert archive.barman.wal_archive_flags == ("--gzip",)
    assert archive.barman.backup_flags == ("--gzip", "--jobs", str(conf["data"]["jobs"]))
    assert archive.barman.retention == retention_policy(archive.spec["retentionPolicy"])
    assert retention_policy("30d") == "RECOVERY WINDOW OF 30 DAYS"
    assert retention_policy("4w") == "RECOVERY WINDOW OF 4 WEEKS"
    assert retention_policy("6m") == "RECOVERY WINDOW OF 6 MONTHS"


def test_wal_archiving_is_continuous(archive: Archive, history: History) -> None:
    segment = archive.switch_and_wait()
    ((archived, failed),) = archive.sql("SELECT archived_count, failed_count FROM pg_stat_archiver")
    assert failed == 0, archive.relay.archive_failures
    assert archived >= 2
    wals = archive.objects("wals")
    # gzip as rendered, one object per segment under <prefix>/<server>/wals/<timeline+log>/.
    assert any(key.endswith(f"/{segment}.gz") for key in wals), wals
    assert all(re.search(r"/[0-9A-F]{24}(\.[0-9A-F]{8}\.backup)?\.gz$", key) for key in wals)


def test_restore_to_a_timestamp_keeps_exactly_what_was_committed_before(
    archive: Archive, history: History
) -> None:
    with restored(archive, history.backup_id, target=history.target) as conn:
        assert phases(conn) == {"before": history.before, "until-target": history.until_target}
    assert archive.relay.restored, "the recovery replayed no archived WAL"


def test_restore_to_the_latest_point(archive: Archive, history: History) -> None:
    with restored(archive, history.backup_id) as conn:
        assert phases(conn) == {
            "before": history.before,
            "until-target": history.until_target,
            "after": history.after,
        }


_FAKE_KUBECTL = """
import json, os, socket, sys
argv = sys.argv[1:]
stdin = sys.stdin.read() if "-i" in argv else ""
with socket.socket(socket.AF_UNIX) as s:
    s.connect(os.environ["FAKE_CLUSTER"])
    s.sendall(json.dumps({"argv": argv, "stdin": stdin}).encode() + b"\\n")
    answer = json.loads(s.makefile().readline())
sys.stdout.write(answer["out"])
sys.stderr.write(answer["err"])
sys.exit(answer["code"])
"""


def test_the_backup_age_alert_follows_the_catalogue(
    archive: Archive, history: History, rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    """The plugin's metric for this bucket's catalogue, into the rendered alert: silent while
    the real backup is younger than the limit, firing once it is older."""
    build = rendered_stack("prod")
    window = recovery_window(archive, build)
    (last,) = [s.value for s in window if s.name.endswith("last_available_backup_timestamp")]
    (backup,) = [b for b in archive.barman.backups() if b["backup_id"] == history.backup_id]
    assert last == datetime.datetime.fromisoformat(backup["end_time_iso"]).timestamp()
    too_old = alert(build, "PostgresBackupTooOld", tmp_path)
    limit = THRESHOLDS.backup_age_hours * 3600
    assert not too_old.firing(window, at=time.time())
    assert not too_old.firing(window, at=last + limit - 1800)
    assert too_old.firing(window, at=last + limit + 1800)


class FakeCluster:
    """``kubectl`` for the restore-check script, where creating the recovery Cluster starts a
    ``RestoredServer`` from the latest backup instead (the only step replaced). The created
    manifest must read through the plugin from the rendered ObjectStore with the source's
    server name; ``exec ... psql`` runs the real psql against the restored server."""

    def __init__(self, archive: Archive, object_store: str, directory: Path) -> None:
        self.archive = archive
        self.object_store = object_store
        self.socket = directory / "fake-cluster.sock"
        self.restored: RestoredServer | None = None
        self.created: list[dict[str, Any]] = []
        self._server: socketserver.UnixStreamServer | None = None
        bindir = directory / "bin"
        bindir.mkdir()
        (bindir / "kubectl").write_text(f"#!{sys.executable}\n{_FAKE_KUBECTL}")
        # The script polls readiness every 15 s; a short real pause keeps it from spinning.
        (bindir / "sleep").write_text("#!/bin/sh\nexec /bin/sleep 0.3\n")
        for tool in ("kubectl", "sleep"):
            (bindir / tool).chmod(0o755)
        self.path = f"{bindir}:{os.environ['PATH']}"

    def answer(self, argv: list[str], stdin: str) -> tuple[str, str, int]:
        assert argv[0] == "--namespace", argv
        verb, rest = argv[2], argv[3:]
        handlers = {"get": self.get, "delete": self.delete, "create": self.create}
        if verb in handlers:
            return handlers[verb](rest)
        if verb == "exec" and self.restored is not None:
            return self.exec(rest, stdin)
        return "", f"unexpected kubectl call {argv}\n", 1

    def get(self, rest: list[str]) -> tuple[str, str, int]:
        if "name" in rest:
            return (f"cluster.postgresql.cnpg.io/{rest[1]}\n" if self.restored else ""), "", 0
        if self.restored is None:
            return "", "Error from server (NotFound)\n", 1
        return ("True" if self.restored.promoted() else "False"), "", 0

    def delete(self, rest: list[str]) -> tuple[str, str, int]:
        if self.restored is not None:
            self.restored.stop()
            self.restored = None
        return "", "", 0

    def create(self, rest: list[str]) -> tuple[str, str, int]:
        manifest = json.loads(Path(rest[rest.index("-f") + 1]).read_text())
        self.created.append(manifest)
        (origin,) = manifest["spec"]["externalClusters"]
        params = origin["plugin"]["parameters"]
        if params != {"barmanObjectName": self.object_store, "serverName": SERVER}:
            return "", f"recovery source not found: {params}\n", 1
        latest = str(self.archive.barman.backups()[-1]["backup_id"])
        self.restored = RestoredServer(self.archive, latest).start()
        return "", "", 0

    def exec(self, rest: list[str], stdin: str) -> tuple[str, str, int]:
        assert self.restored is not None
        command = rest[rest.index("--") + 1 :]
        command[0] = str(PG_BIN / "psql")
        command[command.index("-h") + 1] = str(self.restored.base)
        result = subprocess.run(
            [*command, "-p", str(self.restored.port)],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self.archive.primary.superuser_password},
            timeout=120,
            check=False,
        )
        return result.stdout, result.stderr, result.returncode

    def __enter__(self) -> FakeCluster:
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = json.loads(self.rfile.readline())
                try:
                    out, err, code = fake.answer(request["argv"], request["stdin"])
                except Exception as error:  # reported to the script as a failed call
                    out, err, code = "", f"fake kubectl: {error!r}\n", 1
                self.wfile.write(json.dumps({"out": out, "err": err, "code": code}).encode())
                self.wfile.write(b"\n")

        # One long-lived thread answers every call (the script makes them one at a time): the
        # restored server it starts gets SIGINT when its starting thread ends (PDEATHSIG).
        self._server = socketserver.UnixStreamServer(str(self.socket), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.restored is not None:
            self.restored.stop()


def run_restore_check(
    archive: Archive, build: Path, tmp_path: Path, *, timeout_seconds: int
) -> tuple[subprocess.CompletedProcess[str], FakeCluster, RestoreCheckRun]:
    """The rendered CronJob's files, run by bash with only ``DIR`` and ``TIMEOUT`` localised."""
    (files_yaml,) = (
        p
        for p in (build / "manifests").glob("configmap_*.yaml")
        if restore_check.SCRIPT_KEY in (yaml.safe_load(p.read_text()).get("data") or {})
    )
    data = yaml.safe_load(files_yaml.read_text())["data"]
    files = tmp_path / "files"
    files.mkdir()
    script = data[restore_check.SCRIPT_KEY].replace(
        f"DIR={restore_check.MOUNT_DIR}\n", f"DIR={files}\n"
    )
    script = re.sub(r"(?m)^TIMEOUT=\d+$", f"TIMEOUT={timeout_seconds}", script)
    assert script.count(str(files)) == 1
    assert f"TIMEOUT={timeout_seconds}" in script
    for key, text in {**data, restore_check.SCRIPT_KEY: script}.items():
        (files / key).write_text(text)
    object_store = rendered_object_store(build)["metadata"]["name"]
    fake = FakeCluster(archive, object_store, tmp_path)
    started = time.time()
    with fake:
        result = subprocess.run(
            [shutil.which("bash") or "/bin/bash", str(files / restore_check.SCRIPT_KEY)],
            env={**os.environ, "PATH": fake.path, "FAKE_CLUSTER": str(fake.socket)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_seconds + 300,
            check=False,
        )
    return result, fake, RestoreCheckRun(started, time.time(), result.returncode)


def restore_check_status(build: Path, run: RestoreCheckRun) -> list[Series]:
    """kube-state-metrics' view of the CronJob (created a day before) and this run's Job."""
    cronjob = rendered_manifest(build, "CronJob", f"{SERVER}-restore-check")
    return restore_check_job_status(cronjob, run, created=run.started - 86400)


def test_the_restore_check_script_proves_the_archive_restores(
    archive: Archive, history: History, rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    build = rendered_stack("prod")
    result, fake, run = run_restore_check(archive, build, tmp_path, timeout_seconds=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    n = len(CHECKED_SCHEMAS)
    assert f"restore check passed: {n} schemas, {n} tables, {20 * n} rows read" in result.stderr
    (manifest,) = fake.created
    assert manifest["metadata"]["name"] == f"{SERVER}-restored"
    assert fake.restored is None, "the recovery Cluster was deleted again"
    # The alerts, fed with what kube-state-metrics reports for this Job: nothing fires now, and
    # without another success the restore check is called stale once its age limit passes.
    status = restore_check_status(build, run)
    assert not alert(build, "RestoreVerificationFailed", tmp_path).firing(status, at=run.finished)
    stale = alert(build, "RestoreVerificationStale", tmp_path)
    limit = THRESHOLDS.restore_check_max_age_days * 86400
    assert not stale.firing(status, at=run.finished + limit - 7200)
    assert stale.firing(status, at=run.finished + limit + 7200)


def test_the_restore_check_fails_when_a_wal_segment_is_missing(
    archive: Archive, history: History, rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    """Without the segment that ends the base backup the recovery never becomes consistent:
    the Cluster never gets Ready, the check fails after its timeout and still cleans up."""
    (backup,) = [b for b in archive.barman.backups() if b["backup_id"] == history.backup_id]
    bucket, _, _ = archive.barman.url.removeprefix("s3://").partition("/")
    (key,) = [k for k in archive.objects("wals") if Path(k).name == f"{backup['end_wal']}.gz"]
    client = archive.s3.client()
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    build = rendered_stack("prod")
    try:
        result, fake, run = run_restore_check(archive, build, tmp_path, timeout_seconds=10)
    finally:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    assert result.returncode != 0
    assert "not ready after 10s" in result.stdout
    assert "FAILED" in result.stdout
    assert fake.restored is None, "the recovery Cluster was deleted again"
    failed = alert(build, "RestoreVerificationFailed", tmp_path)
    assert failed.firing(restore_check_status(build, run), at=run.finished + 600)


def test_retention_keeps_what_the_recovery_window_needs(
    archive: Archive, history: History, rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    """Two backups made to look 50 and 40 days old: with the rendered 30-day window, recovery
    to 30 days ago starts from the 40-day one, so it stays; the 50-day one and the WAL only it
    needs go."""
    archive.sql("INSERT INTO ledger (phase) SELECT 'later' FROM generate_series(1, 10)")
    newer = archive.base_backup()
    archive.switch_and_wait()
    assert [b["backup_id"] for b in archive.barman.backups()] == [history.backup_id, newer]
    now = datetime.datetime.now(datetime.UTC)
    age(archive, history.backup_id, now - datetime.timedelta(days=50))
    age(archive, newer, now - datetime.timedelta(days=40))
    wals_before = archive.objects("wals")

    archive.barman.run(
        "barman-cloud-backup-delete", flags=["--retention-policy", archive.barman.retention]
    )

    (kept,) = archive.barman.backups()
    assert kept["backup_id"] == newer
    wals_after = archive.objects("wals")
    assert set(wals_after) < set(wals_before), "the WAL only the deleted backup needed is gone"
    segments = [Path(k).name[:24] for k in wals_after]
    assert min(segments) == kept["begin_wal"], "every segment from the kept backup on stays"
    # What is left still restores: the kept backup plus the WAL after it.
    with restored(archive, newer) as conn:
        assert phases(conn)["later"] == 10
    # The newest backup left is 40 days old: the plugin's metric now makes the alert fire.
    build = rendered_stack("prod")
    too_old = alert(build, "PostgresBackupTooOld", tmp_path)
    assert too_old.firing(recovery_window(archive, build), at=time.time())


def age(archive: Archive, backup_id: str, when: datetime.datetime) -> None:
    """Rewrite the times in a backup's ``backup.info`` as if it had been taken at ``when``."""
    bucket, _, prefix = archive.barman.url.removeprefix("s3://").partition("/")
    key = f"{prefix}/{SERVER}/base/{backup_id}/backup.info"
    client = archive.s3.client()
    text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    text = re.sub(r"(?m)^(begin_time|end_time)=.*$", lambda m: f"{m.group(1)}={stamp}", text)
    client.put_object(Bucket=bucket, Key=key, Body=text.encode())
