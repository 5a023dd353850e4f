"""Backups and point-in-time recovery for real, from the rendered ``ObjectStore``.

A throw-away PostgreSQL 15 archives its WAL through Barman Cloud to a local S3 server, with the
command lines derived from the ObjectStore the prod stack renders (bucket and prefix, server
name, compression, jobs, credentials' keys, retention; only ``endpointURL`` is pointed at the
local server). Then: a base backup, more writes, a restore to a timestamp and one to the latest
point, each started as a real PostgreSQL that replays the archived WAL, and the retention policy
applied by ``barman-cloud-backup-delete``. See ``tests/integration/barman_cloud.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from components import inputs
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

pytestmark = pytest.mark.integration

SERVER = inputs.CLUSTER_NAME
"""The plugin archives under the Cluster's name (no ``serverName`` parameter is rendered)."""
DATABASE = "postgres"
"""No extra database: every base backup tars and gzips the whole data directory."""
SECRET_VALUES = {"ACCESS_KEY_ID": "local-access-key", "ACCESS_SECRET_KEY": "local-secret-key"}


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
    archive.sql("CREATE TABLE ledger (id serial PRIMARY KEY, phase text NOT NULL)")
    archive.sql("INSERT INTO ledger (phase) SELECT 'before' FROM generate_series(1, 100)")
    backup_id = archive.base_backup()
    archive.sql("INSERT INTO ledger (phase) SELECT 'until-target' FROM generate_series(1, 50)")
    ((target,),) = archive.sql("SELECT clock_timestamp()")
    time.sleep(0.5)
    archive.sql("INSERT INTO ledger (phase) SELECT 'after' FROM generate_series(1, 25)")
    archive.switch_and_wait()
    return History(backup_id=backup_id, target=target, before=100, until_target=50, after=25)


@contextlib.contextmanager
def restored(
    archive: Archive, backup_id: str, target: datetime.datetime | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """Restore ``backup_id`` into a new data directory, replay WAL, yield a connection."""
    base = Path(tempfile.mkdtemp(prefix="pgplatform-restore-"))
    data = base / "data"
    server = None
    try:
        archive.barman.run("barman-cloud-restore", backup_id, str(data), timeout=300)
        for path in (base, *base.rglob("*")):
            give_to_server_user(path)
        base.chmod(0o700)
        data.chmod(0o700)
        port = free_port()
        recovery = {
            "port": str(port),
            "listen_addresses": f"'{LOOPBACK}'",
            "unix_socket_directories": f"'{base}'",
            # Like the restore check's Cluster: it reads the archive, never writes to it.
            "archive_mode": "off",
            "restore_command": archive.relay.command("restore"),
            "recovery_target_action": "'promote'",
        }
        if target is not None:
            recovery["recovery_target_time"] = f"'{target.isoformat()}'"
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in recovery.items()))
        (data / "recovery.signal").touch()
        give_to_server_user(data / "recovery.signal")
        server = spawn_server(
            [str(PG_BIN / "postgres"), "-D", str(data)], base / "server.log", stop_signal=2
        )
        conn = wait_for_promotion(base, port, archive.primary.superuser_password, server)
        with conn:
            yield conn
    finally:
        if server is not None:
            stop_server(server, stop_signal=signal.SIGINT)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def wait_for_promotion(
    base: Path, port: int, password: str, server: Any, timeout: float = 180
) -> psycopg.Connection[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        with contextlib.suppress(psycopg.OperationalError):
            conn = connect(
                host=str(base),
                port=port,
                user="postgres",
                password=password,
                dbname=DATABASE,
                autocommit=True,
            )
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0] is False:
                return conn
            conn.close()
        time.sleep(0.2)
    log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
    raise AssertionError(f"the restored server did not finish recovery:\n{log}")


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


def test_retention_keeps_what_the_recovery_window_needs(archive: Archive, history: History) -> None:
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


def age(archive: Archive, backup_id: str, when: datetime.datetime) -> None:
    """Rewrite the times in a backup's ``backup.info`` as if it had been taken at ``when``."""
    bucket, _, prefix = archive.barman.url.removeprefix("s3://").partition("/")
    key = f"{prefix}/{SERVER}/base/{backup_id}/backup.info"
    client = archive.s3.client()
    text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    text = re.sub(r"(?m)^(begin_time|end_time)=.*$", lambda m: f"{m.group(1)}={stamp}", text)
    client.put_object(Bucket=bucket, Key=key, Body=text.encode())
