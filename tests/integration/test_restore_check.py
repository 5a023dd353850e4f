"""The restore-check Job's script and query, run for real; the monitoring grants on real SQL.

The script runs under bash with a stand-in ``kubectl`` that keeps the recovery Cluster's
existence in a state file and answers ``exec ... psql`` by running the real ``psql`` against a
throw-away PostgreSQL 15 holding a "recovered" database. So the flow (leftovers removed, trap
armed, Cluster created, waited for, checked, deleted on success, failure and SIGTERM) and the
check query itself are exercised, not just their text.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from components.render import restore_check as render
from components.render.metrics_catalog import cnpg_custom_queries_yaml
from components.render.postgres_cluster import CNPG_API_VERSION
from tests.integration.pg import PG_BIN, PgCluster, running_cluster
from tests.tooling import require_tool

pytestmark = pytest.mark.integration

DATABASE = "restore_probe"
SCHEMAS = ("identity", "content", "platform")

FAKE_KUBECTL = r"""
import json, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_STATE"])
calls = state / "calls.jsonl"
exists = state / "cluster.json"
argv = sys.argv[1:]
with calls.open("a") as f:
    f.write(json.dumps(argv) + "\n")
assert argv[0] == "--namespace", argv
argv = argv[2:]
verb = argv[0]
if verb == "get":
    if "-o" in argv and argv[argv.index("-o") + 1] == "name":
        if exists.exists():
            print("cluster.postgresql.cnpg.io/" + argv[2])
        sys.exit(0)
    if not exists.exists():
        print("Error from server (NotFound)", file=sys.stderr)
        sys.exit(1)
    print("True" if os.environ.get("FAKE_READY") == "1" else "False", end="")
elif verb == "delete":
    exists.unlink(missing_ok=True)
elif verb == "create":
    manifest = json.loads(Path(argv[argv.index("-f") + 1]).read_text())
    exists.write_text(json.dumps(manifest))
elif verb == "exec":
    if not exists.exists():
        sys.exit(1)
    command = argv[argv.index("--") + 1:]
    command[command.index("-h") + 1] = os.environ["PG_SOCKET"]
    command[0] = os.environ["PSQL"]
    command += ["-p", os.environ["PG_PORT"]]
    sys.exit(subprocess.run(command, check=False).returncode)
else:
    sys.exit(f"unexpected kubectl call {argv}")
"""


@pytest.fixture(scope="module")
def recovered(pg_cluster: PgCluster) -> PgCluster:
    """A database shaped like a recovered one: schemas, a forced-RLS table, rows."""
    pg_cluster.create_database(DATABASE)
    with pg_cluster.connect(DATABASE) as conn:
        for schema in SCHEMAS:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.item (id int PRIMARY KEY, name text)")
            conn.execute(f"INSERT INTO {schema}.item SELECT g, 'n' FROM generate_series(1, 50) g")
        conn.execute("ALTER TABLE identity.item ENABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE identity.item FORCE ROW LEVEL SECURITY")
    return pg_cluster


def check_input(schemas: tuple[str, ...] = SCHEMAS) -> render.RestoreCheckInput:
    return render.RestoreCheckInput(
        namespace="pgplatform",
        source_cluster="postgres-db",
        database=DATABASE,
        schemas=schemas,
        schedule="0 4 1 * *",
        destination_path="s3://bucket/cnpg",
    )


def prepare(tmp_path: Path, inp: render.RestoreCheckInput, pg: PgCluster) -> dict[str, str]:
    """Files of the ConfigMap, a fake kubectl and an instant sleep on PATH; returns the env."""
    bash = require_tool("bash", "bash")
    files = tmp_path / "files"
    files.mkdir()
    manifest = render.recovery_cluster_manifest(inp, {"instances": 1})
    for key, text in render.config_map_data(inp, manifest).items():
        local = text.replace(f"DIR={render.MOUNT_DIR}\n", f"DIR={files}\n")
        if key == render.SCRIPT_KEY:
            assert local != text, "the script no longer sets DIR"
        (files / key).write_text(local)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    (bindir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("kubectl", "sleep"):
        (bindir / tool).chmod(stat.S_IRWXU)
    state = tmp_path / "state"
    state.mkdir()
    return {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "BASH": bash,
        "FAKE_STATE": str(state),
        "FAKE_READY": "1",
        "PSQL": str(PG_BIN / "psql"),
        "PG_SOCKET": str(pg.socket_dir),
        "PG_PORT": str(pg.port),
        "PGPASSWORD": pg.superuser_password,
        "SCRIPT": str(files / render.SCRIPT_KEY),
    }


def calls(env: dict[str, str]) -> list[list[str]]:
    lines = (Path(env["FAKE_STATE"]) / "calls.jsonl").read_text().splitlines()
    return [json.loads(line)[2:] for line in lines]


def cluster_exists(env: dict[str, str]) -> bool:
    return (Path(env["FAKE_STATE"]) / "cluster.json").exists()


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [env["BASH"], env["SCRIPT"]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_good_restore_passes_and_is_deleted(tmp_path: Path, recovered: PgCluster) -> None:
    env = prepare(tmp_path, check_input(), recovered)
    result = run_script(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restore check passed: 3 schemas, 3 tables, 150 rows read" in result.stderr
    assert "PASSED" in result.stdout
    verbs = [c[0] for c in calls(env)]
    create = verbs.index("create")
    assert verbs[0] == "delete", "leftovers are removed first"
    assert verbs[create + 1 :].count("exec") == 1
    assert verbs[-2:] == ["delete", "get"], "the Cluster is deleted and confirmed gone"
    assert not cluster_exists(env)
    created = next(c for c in calls(env) if c[0] == "create")
    manifest = json.loads((Path(created[-1])).read_text())
    assert manifest["apiVersion"] == CNPG_API_VERSION
    assert manifest["metadata"]["name"] == "postgres-db-restored"


def test_a_missing_schema_fails_and_still_cleans_up(tmp_path: Path, recovered: PgCluster) -> None:
    env = prepare(tmp_path, check_input((*SCHEMAS, "audit")), recovered)
    result = run_script(env)
    assert result.returncode != 0
    assert "schemas missing: {audit}" in result.stderr
    assert "FAILED" in result.stdout
    assert not cluster_exists(env)


def test_leftovers_of_an_earlier_run_are_removed(tmp_path: Path, recovered: PgCluster) -> None:
    env = prepare(tmp_path, check_input(), recovered)
    (Path(env["FAKE_STATE"]) / "cluster.json").write_text("{}")
    result = run_script(env)
    assert result.returncode == 0, result.stdout + result.stderr
    first_create = [c[0] for c in calls(env)].index("create")
    assert "delete" in [c[0] for c in calls(env)[:first_create]]


def test_termination_while_waiting_deletes_the_cluster(
    tmp_path: Path, recovered: PgCluster
) -> None:
    env = prepare(tmp_path, check_input(), recovered)
    env["FAKE_READY"] = "0"
    process = subprocess.Popen(
        [env["BASH"], env["SCRIPT"]],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not cluster_exists(env) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster_exists(env), "the script never created the Cluster"
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143
    assert "FAILED (exit 143)" in out
    assert not cluster_exists(env)


@pytest.fixture(scope="module")
def access_cluster(rendered_stack: Callable[[str], Path]) -> Iterator[tuple[PgCluster, str]]:
    """A cluster with the staging access plan applied, as CloudNativePG's database would be."""
    access_sql = (rendered_stack("staging") / "sql" / "010_access.sql").read_text()
    with running_cluster() as cluster:
        cluster.create_database("app")
        with cluster.connect("app") as conn:
            # CloudNativePG creates the extension itself where it is preloaded.
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("SELECT 1")
        cluster.apply_sql("app", [("010_access.sql", access_sql)])
        yield cluster, "app"


def run_cnpg_queries(cluster: PgCluster, dbname: str) -> None:
    """As CloudNativePG runs custom queries: read-only, SET ROLE pg_monitor, pinned path."""
    queries = yaml.safe_load(cnpg_custom_queries_yaml())
    with cluster.connect(dbname) as conn:
        for name, query in queries.items():
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute("SET LOCAL ROLE pg_monitor")
                conn.execute("SET LOCAL search_path TO pg_catalog, public, pg_temp")
                try:
                    conn.execute(query["query"]).fetchall()
                except psycopg.Error as error:
                    raise AssertionError(f"custom query {name}: {error}") from error


def test_monitoring_queries_work_under_the_access_plan(
    access_cluster: tuple[PgCluster, str],
) -> None:
    cluster, dbname = access_cluster
    with cluster.connect(dbname) as conn:
        (usage,) = conn.execute(
            "SELECT has_schema_privilege('pg_monitor', 'public', 'USAGE')"
        ).fetchone() or (None,)
        (public,) = conn.execute(
            "SELECT has_schema_privilege('public', 'public', 'USAGE')"
        ).fetchone() or (None,)
    assert (usage, public) == (True, False)
    run_cnpg_queries(cluster, dbname)


def test_without_the_grant_pg_stat_statements_is_unreadable(
    access_cluster: tuple[PgCluster, str],
) -> None:
    """Control: the grant is what makes the statements query work after the public revoke."""
    cluster, dbname = access_cluster
    with cluster.connect(dbname) as conn:
        conn.execute("REVOKE USAGE ON SCHEMA public FROM pg_monitor")
    try:
        with pytest.raises(AssertionError, match="pg_stat_statements"):
            run_cnpg_queries(cluster, dbname)
    finally:
        with cluster.connect(dbname) as conn:
            conn.execute("GRANT USAGE ON SCHEMA public TO pg_monitor")
