"""An API serving the CDC copies: what the settings refuse, where it connects, what it costs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from components import inputs
from components.cdc_pipeline import copy_baseline_args
from components.managed_postgres import DatabaseEndpoint
from components.render import copy_database
from components.render.access import AUTHENTICATOR
from components.render.budget import compute_budget
from components.render.domain_api import DB_CA_FILE, network_policy_body
from components.render.migrations import SCRIPT as MIGRATE_SCRIPT
from components.settings import SettingsError, budget_input, decode_config_value, parse_settings
from tests.conftest import ROOT, api_database, run_program, stack_config, stack_settings
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

HOST = api_database(stack_settings("staging"), "analytics")


def raw_config(stack: str) -> dict[str, Any]:
    config, _ = stack_config(stack)
    return {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}


def problems(raw: dict[str, Any], stack: str = "staging") -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw)
    return {p.path: p.message for p in caught.value.problems}


def with_analytics(stack: str = "staging", **keys: Any) -> dict[str, Any]:
    raw = raw_config(stack)
    raw["domains"]["analytics"] = {**raw["domains"].get("analytics", {}), **keys}
    return raw


def test_staging_serves_analytics_from_the_copies() -> None:
    s = parse_settings("staging", raw_config("staging"))
    assert s.copy_domains() == ("analytics",)
    assert s.database_of("analytics") == s.cdc.database
    assert s.database_of("content") == s.postgres.database


def test_a_database_that_is_neither_names_both_allowed() -> None:
    found = problems(with_analytics(database="reports"))
    message = found["pgplatform:domains.analytics.database"]
    assert "'analytics'" in message
    assert "'app'" in message


def test_the_copies_are_read_on_the_replicas_only() -> None:
    found = problems(with_analytics(readFromReplicas=False))
    assert (
        "replication alone writes the copies"
        in found["pgplatform:domains.analytics.readFromReplicas"]
    )


def test_an_empty_cdc_database_is_refused() -> None:
    raw = with_analytics()
    raw["cdc"]["tables"] = {}
    assert "lists no table" in problems(raw)["pgplatform:domains.analytics.database"]


def test_a_migration_reading_an_unpublished_domain_is_refused() -> None:
    raw = with_analytics()
    # analytics' first migration reads content.articles: without its copy, it cannot apply.
    raw["cdc"]["tables"] = {
        k: v for k, v in raw["cdc"]["tables"].items() if k.startswith("identity")
    }
    message = problems(raw)["pgplatform:domains.analytics.database"]
    assert "analytics/0001_article_stats.sql requires domain 'content'" in message


def test_the_graphql_pilot_cannot_serve_it() -> None:
    raw = with_analytics()
    raw["graphql"] = {**raw.get("graphql", {}), "enabled": True, "schemas": ["analytics"]}
    assert "CDC database" in problems(raw)["pgplatform:graphql.schemas"]


def test_publishing_into_the_served_schema_is_refused() -> None:
    raw = with_analytics()
    raw["cdc"]["tables"]["billing.invoices"] = {"key": ["id"], "columns": {"id": "bigint"}}
    raw["domains"]["billing"] = {**raw["domains"]["billing"], "readFromReplicas": True}
    raw["domains"]["billing"]["database"] = "analytics"
    raw["domains"]["billing"].pop("tenancy", None)
    raw["services"] = [svc for svc in raw["services"] if "billing" not in svc.get("schemas", [])]
    assert "database that serves it" in problems(raw)["pgplatform:domains.billing.database"]


def test_migrations_split_by_database() -> None:
    s = parse_settings("staging", raw_config("staging"))
    main = inputs.migration_plan(s)
    copies = inputs.copy_migration_plan(s)
    assert "analytics" not in main.domains
    assert "content" in main.domains
    assert copies.domains == ("analytics",)
    assert [m.label for m in copies.migrations] == ["analytics/0001_article_stats.sql"]


def test_prod_keeps_every_domain_on_the_pooler() -> None:
    s = parse_settings("prod", raw_config("prod"))
    assert s.copy_domains() == ()
    assert "analytics" in inputs.migration_plan(s).domains


def test_postgrest_reads_the_cdc_database_on_the_replicas() -> None:
    s = parse_settings("staging", raw_config("staging"))
    conf = inputs.postgrest_conf_input(s, "analytics", HOST)
    assert (conf.db_host, conf.db_port, conf.db_name) == (HOST.ro_host, 5432, s.cdc.database)
    assert (conf.db_user, conf.db_sslmode) == (AUTHENTICATOR, s.postgres.sslmode)
    other = inputs.postgrest_conf_input(s, "content")
    assert other.db_host == inputs.pgbouncer_host(s)
    with pytest.raises(ValueError, match="serves the CDC copies"):
        inputs.postgrest_conf_input(s, "analytics")


def test_a_verifying_sslmode_mounts_the_servers_ca() -> None:
    raw = raw_config("staging")
    raw["postgres"] = {**raw.get("postgres", {}), "sslmode": "verify-full"}
    raw["postgres"]["providerCaFile"] = "/tmp/ca.crt"
    s = parse_settings("staging", raw)
    conf = inputs.postgrest_conf_input(s, "analytics", HOST)
    assert (conf.db_sslmode, conf.db_sslrootcert) == ("verify-full", DB_CA_FILE)
    spec = inputs.domain_api_spec(s, "analytics", HOST)
    assert spec.direct_database is not None
    assert spec.direct_database.ca_secret == HOST.ca_secret


def test_its_pods_reach_the_database_pods_not_the_pooler() -> None:
    s = parse_settings("staging", raw_config("staging"))
    egress = network_policy_body(inputs.domain_api_spec(s, "analytics", HOST))["spec"]["egress"]
    assert egress[0]["to"] == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "postgres-db"}}}]
    assert egress[0]["ports"] == [{"protocol": "TCP", "port": 5432}]
    pooled = network_policy_body(inputs.domain_api_spec(s, "content"))["spec"]["egress"]
    assert "cnpg.io/cluster" not in str(pooled)


def test_its_connections_count_on_the_server_side() -> None:
    s = parse_settings("staging", raw_config("staging"))
    budget = compute_budget(budget_input(s))
    d = s.domains["analytics"]
    [direct] = [t for t in budget.server_terms if t.label == "domains.analytics (direct)"]
    assert direct.value == d.replicas.max * (d.db_pool + 1)
    assert "domains.analytics" not in [t.label for t in budget.client_terms]
    # No other domain reads the replicas through the pooler: its ro pool has no user.
    [ro] = [t for t in budget.server_terms if t.label == f"pool {s.postgres.database}_ro"]
    assert ro.value == 0


def test_the_copies_are_set_up_after_the_cdc_job_and_before_their_api(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    by_urn = {r.urn: r for r in mocks.resources}
    [setup] = [r for r in mocks.resources if r.name == "sql-baseline-copies"]
    assert any(by_urn[d].name.startswith("cdc-job-") for d in setup.dependencies)
    jobs = {
        r.name: r.inputs
        for r in mocks.kubernetes()
        if r.type.endswith(":Job") and r.name.startswith("sql-baseline-copies-")
    }
    [apply_job] = [body for name, body in jobs.items() if "-migrations-" not in name]
    [migrate_job] = [body for name, body in jobs.items() if "-migrations-" in name]
    for body in (apply_job, migrate_job):
        [container] = body["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PGDATABASE"] == "analytics"
    # Each migration's transaction seals what it created there.
    configs = {
        r.name: r.inputs["data"]
        for r in mocks.kubernetes()
        if r.type.endswith(":ConfigMap") and r.name.startswith("sql-baseline-copies")
    }
    script = configs["sql-baseline-copies-migrations-sql"][MIGRATE_SCRIPT]
    settings = parse_settings("staging", raw_config("staging"))
    endpoint = DatabaseEndpoint(
        rw_host="postgres-db-rw.pgplatform.svc.cluster.local",
        ro_host=HOST.ro_host,
        port=5432,
        ca_secret=HOST.ca_secret,
        cluster=HOST.cluster,
        admin_secret="postgres-admin",
    )
    plan = copy_baseline_args(settings, endpoint).copies
    assert plan is not None
    for statement in copy_database.seal_statements(plan):
        assert statement in script
    assert copy_database.SEAL_FILE in configs["sql-baseline-copies-sql"]
    [api] = [
        r
        for r in mocks.resources
        if r.type == "pgplatform:index:DomainApi" and r.name.startswith("analytics")
    ]
    waits = [by_urn[d].name for d in api.dependencies]
    assert any(n.startswith("sql-baseline-copies-migrations-job-") for n in waits)
    others = [r for r in mocks.resources if r.type == "pgplatform:index:DomainApi" and r is not api]
    assert others
    assert not [
        r.name
        for r in others
        for d in r.dependencies
        if by_urn[d].name.startswith("sql-baseline-copies")
    ]


def test_prod_sets_up_no_cdc_database(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "prod")
    assert not [r for r in mocks.resources if r.name.startswith("sql-baseline-copies")]


def test_the_bundle_is_the_same_in_every_process() -> None:
    """Its hash names the Job: a bundle varying with set order would re-run it on every up."""
    code = (
        "from tests.conftest import stack_settings\n"
        "from components.cdc_pipeline import copy_database_input\n"
        "from components.render import copy_database\n"
        "from components.render.baseline import bundle_checksum\n"
        "cd = copy_database_input(stack_settings('staging'))\n"
        "print(bundle_checksum(copy_database.job_bundle(cd)))\n"
    )
    sums = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(sums) == 1
