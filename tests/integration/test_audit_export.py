"""The audit export (``export.sh``) on PostgreSQL 15 with pgaudit loaded: exactly once.

The rendered script and query run as the Deployment runs them (``sh export.sh`` with libpq's
environment), here with ``AUDIT_ONCE=1`` so each run stops when it has caught up. A restart is
a second run over the same spool; a kill is SIGKILL to the running exporter and its psql.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from components.render.audit_export import SPOOL_FILE, config_map_data
from tests.integration.pg import PgCluster, running_cluster
from tests.integration.test_audit_trail import pgaudit_server_settings, require_pgaudit
from tests.integration.test_baseline_sql import DATABASE, prepare_stack_database

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def database(rendered_stack: Callable[[str], Path]) -> Iterator[PgCluster]:
    require_pgaudit()
    with running_cluster(settings=pgaudit_server_settings(rendered_stack("prod"))) as cluster:
        dbname = cluster.create_database(DATABASE)
        with cluster.connect(dbname) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgaudit")
        prepare_stack_database(cluster, dbname, rendered_stack("staging"))
        yield cluster


@pytest.fixture
def admin(database: PgCluster) -> Iterator[Conn]:
    with database.connect(DATABASE) as conn:
        yield conn


@pytest.fixture
def exporter(tmp_path: Path, database: PgCluster) -> Callable[..., subprocess.Popen[bytes]]:
    """``exporter(spool, batch=…)`` starts ``sh export.sh`` (once mode) on ``spool``."""
    files = tmp_path / "files"
    files.mkdir()
    for name, text in config_map_data().items():
        (files / name).write_text(text)

    def start(spool: Path, *, batch: int = 1000, rotate_bytes: int = 1 << 30) -> Any:
        spool.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ["PATH"],
            "PGHOST": str(database.socket_dir),
            "PGPORT": str(database.port),
            "PGUSER": database.superuser,
            "PGPASSWORD": database.superuser_password,
            "PGDATABASE": DATABASE,
            "AUDIT_SPOOL": str(spool),
            "AUDIT_BATCH_SIZE": str(batch),
            "AUDIT_INTERVAL_SECONDS": "1",
            "AUDIT_ROTATE_BYTES": str(rotate_bytes),
            "AUDIT_KEEP_FILES": "1000",
            "AUDIT_ONCE": "1",
        }
        return subprocess.Popen(
            ["/bin/sh", str(files / "export.sh")],
            env=env,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    return start


def run(start: Callable[..., subprocess.Popen[bytes]], spool: Path, **kwargs: Any) -> str:
    process = start(spool, **kwargs)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    return err.decode()


def exported(spool: Path) -> list[dict[str, Any]]:
    """Every line of the spool, oldest file first; each must be one whole JSON object."""
    files = [*sorted(spool.glob("audit-*.jsonl")), spool / SPOOL_FILE]
    lines = [line for f in files if f.exists() for line in f.read_text().splitlines(True)]
    assert all(line.endswith("\n") for line in lines)
    return [json.loads(line) for line in lines]


def assert_exactly_once(admin: Conn, spool: Path) -> list[dict[str, Any]]:
    """Each committed audit.log row is in the spool once, in (txid, id) order."""
    rows = exported(spool)
    counts = Counter(row["id"] for row in rows)
    assert [i for i, n in counts.items() if n > 1] == []
    assert [(r["txid"], r["id"]) for r in rows] == sorted((r["txid"], r["id"]) for r in rows)
    expected = {i for (i,) in admin.execute("SELECT id FROM audit.log").fetchall()}
    assert set(counts) == expected
    return rows


def test_ddl_and_write_are_exported_once_across_restarts(
    admin: Conn, exporter: Callable[..., Any], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    run(exporter, spool)
    with admin.transaction():
        admin.execute("SET LOCAL ROLE pgplatform_owner")
        admin.execute("CREATE TABLE content.exported (id bigint PRIMARY KEY)")
    [(article,)] = admin.execute(
        "INSERT INTO content.articles (author_sub, title) VALUES ('editor-9', 'shipped') "
        "RETURNING id"
    ).fetchall()
    run(exporter, spool)
    run(exporter, spool)  # a restart with nothing new writes nothing
    rows = assert_exactly_once(admin, spool)
    ddl = [
        r
        for r in rows
        if r["op"] == "DDL"
        and (r["new"] or {}).get("command_tag") == "CREATE TABLE"
        and (r["new"] or {}).get("object_identity") == "content.exported"
    ]
    assert [(r["schema"], r["table"], r["role"]) for r in ddl] == [
        ("content", "exported", "pgplatform_owner")
    ]
    writes = [r for r in rows if r["op"] == "INSERT" and (r["new"] or {}).get("id") == article]
    assert [(r["table"], r["new"]["title"]) for r in writes] == [("articles", "shipped")]
    assert writes[0]["database"] == DATABASE


def test_killed_mid_batch_then_restarted(
    admin: Conn, exporter: Callable[..., Any], tmp_path: Path
) -> None:
    admin.execute(
        "INSERT INTO content.articles (author_sub, title, body) "
        "SELECT 'bulk', 'row ' || n, repeat('x', 200) FROM generate_series(1, 20000) AS n"
    )
    spool = tmp_path / "spool"
    process = exporter(spool, batch=500)
    current = spool / SPOOL_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not current.exists() or current.stat().st_size == 0):
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = current.stat().st_size
    assert written > 0, "killed before the first batch"
    # A kill between two appends leaves whole lines; cut the last one to stand for a kill in
    # the middle of a write, which the next start must repair.
    with current.open("r+b") as spool_file:
        spool_file.truncate(written - 7)
    log = run(exporter, spool, batch=500)
    assert "cut an incomplete last line" in log
    rows = assert_exactly_once(admin, spool)
    assert sum(1 for r in rows if (r["new"] or {}).get("author_sub") == "bulk") == 20000


def test_an_id_that_commits_late_is_still_exported(
    database: PgCluster, admin: Conn, exporter: Callable[..., Any], tmp_path: Path
) -> None:
    """Ids are taken at INSERT and seen at COMMIT: a smaller id may appear after a larger one."""
    spool = tmp_path / "spool"
    run(exporter, spool)
    with (
        database.connect(DATABASE, autocommit=False) as early,
        database.connect(DATABASE, autocommit=False) as late,
    ):
        early.execute("SELECT txid_current()")  # the older transaction
        [(small,)] = late.execute(
            "INSERT INTO content.articles (author_sub, title) VALUES ('late', 'small id') "
            "RETURNING id"
        ).fetchall()
        [(large,)] = early.execute(
            "INSERT INTO content.articles (author_sub, title) VALUES ('early', 'large id') "
            "RETURNING id"
        ).fetchall()
        assert small < large
        early.commit()
        run(exporter, spool)  # the later transaction is still open
        assert assert_titles(spool) == ["large id"]
        late.commit()
    run(exporter, spool)
    assert assert_titles(spool) == ["large id", "small id"]
    assert_exactly_once(admin, spool)


def assert_titles(spool: Path) -> list[str]:
    return [
        r["new"]["title"]
        for r in exported(spool)
        if r["op"] == "INSERT" and (r["new"] or {}).get("author_sub") in {"early", "late"}
    ]


def test_rotation_keeps_the_position(
    admin: Conn, exporter: Callable[..., Any], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    run(exporter, spool, rotate_bytes=500_000)
    assert len(list(spool.glob("audit-*.jsonl"))) > 1
    admin.execute("INSERT INTO content.articles (author_sub, title) VALUES ('rot', 'after')")
    run(exporter, spool, rotate_bytes=500_000)
    assert_exactly_once(admin, spool)
