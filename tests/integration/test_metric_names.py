"""Every PostgreSQL metric the alerts and dashboards read exists in a real scrape.

Debian's ``prometheus-postgres-exporter`` (the prometheus-community exporter, 0.11) runs against
a throw-away PostgreSQL 15 with the query file we ship for external mode, as a role that only has
``pg_monitor`` (what the deployed exporter gets). The custom queries for CloudNativePG run on the
same server under CloudNativePG's conditions (pg_monitor, read-only, pinned search_path), so a
typo in their SQL or a column that does not match its declared metric fails here, not in prod.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from components.render.alerts import CdcSlotAlert, default_thresholds, render_prometheus_rules
from components.render.baseline import baseline_sql_files
from components.render.dashboards import dashboard_expressions, render_dashboards
from components.render.metrics_catalog import (
    PostgresMode,
    cnpg_custom_queries_yaml,
    custom_query_sql,
    load_documented_metrics,
    metric_names,
    postgres_exporter_queries_yaml,
    undocumented,
)
from components.render.slo import RECORDED_NAMES
from tests.conftest import STACKS
from tests.integration.pg import (
    LOOPBACK,
    PgCluster,
    free_port,
    give_to_server_user,
    spawn_server,
    stop_server,
)
from tests.integration.rendered import rendered_dashboards, rendered_rule_specs
from tests.tooling import require_tool

pytestmark = pytest.mark.integration

METRIC_LISTS = Path(__file__).resolve().parent.parent / "data" / "metrics"
DOMAINS = ("identity", "content", "analytics")
PROBE_SLOT = "metrics_probe_slot"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)")


def used_names(mode: PostgresMode) -> frozenset[str]:
    """Metric names of every rule and dashboard query rendered for ``mode``."""
    rules = render_prometheus_rules(
        namespace="pgplatform",
        domains=DOMAINS,
        cluster_name="pgplatform-db",
        thresholds=default_thresholds("prod"),
        runbook_base_url="https://example.com/runbooks",
        max_connections=400,
        postgres_mode=mode,
        expected_replicas=2,
        cdc=CdcSlotAlert(slot=PROBE_SLOT, retained_wal_bytes=1024**3),
    )
    dashboards = render_dashboards(
        namespace="pgplatform",
        domains=DOMAINS,
        cluster_name="pgplatform-db",
        max_connections=400,
        postgres_mode=mode,
    )
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    expressions += dashboard_expressions(dashboards)
    return frozenset().union(*(metric_names(expr) for expr in expressions))


@pytest.fixture(scope="module")
def monitored_database(
    pg_cluster: PgCluster, fresh_database: Callable[[str], str]
) -> Iterator[tuple[str, str, str]]:
    """A database with domain tables, statement history, the platform's RLS guard and a
    pg_monitor-only login role."""
    dbname = fresh_database("metrics_probe")
    role = "metrics_probe_" + os.urandom(4).hex()
    password = os.urandom(16).hex()
    with pg_cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
    [guard] = [text for name, text in baseline_sql_files() if name == "040_rls_guard.sql"]
    pg_cluster.apply_sql(dbname, [("040_rls_guard.sql", guard)])
    with pg_cluster.connect(dbname) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for schema in DOMAINS:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.item (id int PRIMARY KEY, name text)")
            conn.execute(
                f"INSERT INTO {schema}.item SELECT g, 'n' || g FROM generate_series(1, 20) g"
            )
            conn.execute(f"SELECT count(*) FROM {schema}.item WHERE id > 5")
        # A slot holding WAL, for the replication slot metrics (dropped again below).
        conn.execute(f"SELECT pg_create_physical_replication_slot('{PROBE_SLOT}', true)")
    try:
        yield dbname, role, password
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                f"WHERE slot_name = '{PROBE_SLOT}'"
            )


def scrape(url: str, process: subprocess.Popen[bytes], deadline: float) -> str:
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres_exporter exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
                body = response.read().decode()
            if re.search(r"^pg_up(\{[^}]*\})? 1$", body, re.MULTILINE):
                return body
        except (urllib.error.URLError, ConnectionError) as error:
            last_error = error
        time.sleep(0.3)
    raise TimeoutError(f"no successful scrape of {url}: {last_error}")


@pytest.fixture(scope="module")
def exporter_scrape(
    pg_cluster: PgCluster,
    monitored_database: tuple[str, str, str],
) -> Iterator[str]:
    """One /metrics body of postgres_exporter started as the deployment would start it."""
    binary = require_tool("prometheus-postgres-exporter", "prometheus-postgres-exporter")
    dbname, role, password = monitored_database
    # Files a server reads live in the cluster's directory, which the server user can reach.
    workdir = pg_cluster.socket_dir / f"exporter-{os.urandom(4).hex()}"
    workdir.mkdir()
    queries = workdir / "queries.yaml"
    queries.write_text(postgres_exporter_queries_yaml())
    for path in (workdir, queries):
        give_to_server_user(path)
    port = free_port()
    dsn = f"postgresql://{role}:{password}@{LOOPBACK}:{pg_cluster.port}/{dbname}?sslmode=disable"
    argv = [
        binary,
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--extend.query-path={queries}",
        "--log.level=warn",
    ]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DATA_SOURCE_NAME", dsn)  # the exporter takes its DSN only from the environment
        process = spawn_server(argv, workdir / "exporter.log", stop_signal=signal.SIGTERM)
    # A transaction left open during the scrape, for pg_stat_activity_max_tx_duration.
    holder = pg_cluster.connect(dbname, autocommit=False)
    try:
        holder.execute("SELECT 1")
        time.sleep(1.1)
        yield scrape(f"http://{LOOPBACK}:{port}/metrics", process, time.monotonic() + 30)
    finally:
        holder.rollback()
        holder.close()
        stop_server(process, stop_signal=signal.SIGTERM, timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def scraped_names(body: str) -> frozenset[str]:
    return frozenset(
        match.group(1)
        for line in body.splitlines()
        if not line.startswith("#") and (match := _SAMPLE.match(line))
    )


def test_every_postgres_exporter_metric_we_use_is_scraped(exporter_scrape: str) -> None:
    documented = frozenset().union(*load_documented_metrics(METRIC_LISTS).values())
    # Series our own SLO rules record are proven against the rendered rules (test_slo.py).
    needed = used_names("external") - documented - RECORDED_NAMES
    assert {"pg_up", "pg_stat_activity_count", "pg_stat_statements_calls_total"} <= needed
    assert {"pg_replication_slots_active", "pg_replication_slots_pg_wal_lsn_diff"} <= needed
    missing = needed - scraped_names(exporter_scrape)
    assert not missing, f"used by alerts/dashboards but not in a real scrape: {sorted(missing)}"


def test_our_queries_run_without_scrape_errors(exporter_scrape: str) -> None:
    assert re.search(r"^pg_exporter_last_scrape_error 0$", exporter_scrape, re.MULTILINE), (
        "postgres_exporter reported a failing query"
    )
    assert re.search(
        r"^pg_platform_guard_rls_guard_installed\{[^}]*\} 1$", exporter_scrape, re.MULTILINE
    ), "the RLS guard of the monitored database is not reported as installed"
    for schema in DOMAINS:
        assert re.search(
            rf'^pg_schema_activity_rows_read_total\{{[^}}]*schemaname="{schema}"[^}}]*\}} [1-9]',
            exporter_scrape,
            re.MULTILINE,
        ), f"no rows read reported for schema {schema}"
    assert re.search(r"^pg_stat_activity_max_tx_duration\{.*\} [1-9]", exporter_scrape, re.M)


def test_cnpg_custom_queries_run_as_cloudnativepg_runs_them(
    pg_cluster: PgCluster, monitored_database: tuple[str, str, str]
) -> None:
    dbname, role, password = monitored_database
    declared = yaml.safe_load(cnpg_custom_queries_yaml())
    assert set(declared) == set(custom_query_sql("cnpg"))
    with pg_cluster.connect_as(role, password, dbname=dbname) as conn:
        for name, query in declared.items():
            conn.execute("BEGIN READ ONLY")
            try:
                conn.execute("SET LOCAL search_path TO pg_catalog, public, pg_temp")
                cursor = conn.execute(query["query"])
                rows = cursor.fetchall()
                columns = [column.name for column in cursor.description or []]
            except psycopg.Error as error:
                pytest.fail(f"custom query {name} fails: {error}")
            finally:
                conn.execute("ROLLBACK")
            expected = [next(iter(metric)) for metric in query["metrics"]]
            assert columns == expected, f"{name}: columns {columns} != declared {expected}"
            assert rows, f"custom query {name} returned no rows"


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_stack_reads_only_real_metrics(
    rendered_stack: Callable[[str], Path], stack: str
) -> None:
    """Every metric the deployed rules and dashboards read is documented for its pinned source.

    Both committed stacks run CloudNativePG, whose names (and those of our custom queries) are
    proven against the documented lists; external-mode names are proven by the real scrape above.
    """
    build = rendered_stack(stack)
    (spec,) = rendered_rule_specs(build)
    expressions = [rule["expr"] for group in spec["groups"] for rule in group["rules"]]
    expressions += dashboard_expressions(rendered_dashboards(build))
    names = frozenset().union(*(metric_names(expr) for expr in expressions))
    assert {"cnpg_collector_up", "pgrst_schema_cache_loads_total"} <= names
    missing = undocumented(names, load_documented_metrics(METRIC_LISTS), "cnpg")
    assert not missing, f"{stack} reads metrics no pinned exporter produces: {sorted(missing)}"
