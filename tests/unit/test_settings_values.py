"""Config the way users write it: schedules, numbers, durations and URLs.

Every value problem is a settings error naming its key before any resource is registered, never
a traceback from a component; values the CLI stores as numbers are accepted where they make
sense; one duration syntax holds for every key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components import inputs
from components.render.durations import duration_ms, go_duration
from components.settings import decode_config_value, parse_settings
from tests.conftest import run_program, stack_config
from tests.unit.test_settings import _PROD, _STAGING, _problems, _with
from tools.mocks import RecordingMocks
from tools.render import render_in_subprocess

pytestmark = pytest.mark.unit


def _only_problem(stack: str, raw: dict[str, Any]) -> str:
    problems = _problems(stack, raw)
    assert len(problems) == 1, problems
    return problems[0]


# --- schedules ---------------------------------------------------------------------------------


def test_cnpg_schedule_with_five_fields_is_a_settings_error() -> None:
    problem = _only_problem("prod", _with(_PROD, "backup.schedule", "0 2 * * *"))
    assert problem.startswith("pgplatform:backup.schedule: '0 2 * * *' has 5 fields")
    assert "six" in problem or "has 6" in problem
    assert "'0 0 2 * * *'" in problem  # an example of the right form


def test_cnpg_schedule_field_out_of_range_is_a_settings_error() -> None:
    problem = _only_problem("prod", _with(_PROD, "backup.schedule", "0 0 25 * * *"))
    assert problem.startswith("pgplatform:backup.schedule:")
    assert "out of range" in problem


@pytest.mark.parametrize("schedule", ["0 4 1 * * *", "0 4 1 *", "0 61 4 * *", "every month"])
def test_restore_check_schedule_is_a_cronjob_schedule(schedule: str) -> None:
    problem = _only_problem("prod", _with(_PROD, "backup.restoreCheckSchedule", schedule))
    assert problem.startswith("pgplatform:backup.restoreCheckSchedule:")
    assert "'0 4 1 * *'" in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("backup.schedule", "@daily"),
        ("backup.schedule", "0 30 1 * * MON-FRI"),
        ("backup.restoreCheckSchedule", "@monthly"),
        ("backup.restoreCheckSchedule", "15 3 1,15 * *"),
    ],
)
def test_valid_schedules_pass(key: str, value: str) -> None:
    parse_settings("prod", _with(_PROD, key, value))


def test_five_field_backup_schedule_never_reaches_a_component(tmp_path: Path) -> None:
    """The offline render (the same program `pulumi up` runs) reports it like any bad key."""
    config = tmp_path / "Pulumi.prod.yaml"
    text = (Path(__file__).resolve().parents[2] / "Pulumi.prod.yaml").read_text()
    config.write_text(text + "    schedule: '0 2 * * *'\n")
    assert text.rstrip().endswith("credentialsSecret: pgplatform-backup-s3")
    result = render_in_subprocess("prod", tmp_path / "out", config)
    assert result.returncode == 2, result.stderr
    assert "pgplatform:backup.schedule: '0 2 * * *' has 5 fields" in result.stderr
    assert "Traceback" not in result.stderr


# --- backup store values checked where the config is read -------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("backup.destinationPath", "s3://"),
        ("backup.destinationPath", "s3:///no-bucket"),
        ("backup.credentialsSecret", "Backup_S3"),
        ("postgres.caSecret", "db ca"),
    ],
)
def test_names_the_cluster_uses_are_checked_in_settings(key: str, value: str) -> None:
    problem = _only_problem("prod", _with(_PROD, key, value))
    assert problem.startswith(f"pgplatform:{key}:")


# --- quantities --------------------------------------------------------------------------------


def test_cpu_given_as_a_number_is_a_quantity() -> None:
    """`pulumi config set --path 'pgplatform:domains.content.resources.limits.cpu' 1` stores 1."""
    stored = json.dumps({"content": {"resources": {"limits": {"cpu": 1}}}, "identity": {}})
    domains = decode_config_value(stored)
    raw = _with(_STAGING, "domains", domains)
    raw = _with(raw, "postgres.resources.requests.cpu", 0.5)
    raw = _with(raw, "pgbouncer.resources.limits.cpu", 2)
    settings = parse_settings("staging", raw)
    assert settings.domains["content"].resources.limits.cpu == "1"
    assert settings.postgres.resources.requests.cpu == "0.5"
    assert settings.pgbouncer.resources.limits.cpu == "2"


@pytest.mark.parametrize("value", ["1.5", "2G", "1e3", "100Mi", ".5"])
def test_kubernetes_quantity_forms(value: str) -> None:
    raw = _with(_STAGING, "postgres.resources.limits.cpu", value)
    assert parse_settings("staging", raw).postgres.resources.limits.cpu == value


@pytest.mark.parametrize("value", ["1 core", "-1", "1GB", True])
def test_bad_quantities_name_their_key(value: Any) -> None:
    problem = _only_problem("staging", _with(_STAGING, "postgres.resources.limits.cpu", value))
    assert problem.startswith("pgplatform:postgres.resources.limits.cpu:")


# --- one duration syntax ------------------------------------------------------------------------


def test_minutes_are_written_m_everywhere() -> None:
    problem = _only_problem("staging", _with(_STAGING, "roles.statementTimeout.admin", "2min"))
    assert problem.startswith("pgplatform:roles.statementTimeout.admin:")
    assert "'2m'" in problem
    raw = _with(_STAGING, "roles.statementTimeout.admin", "2m")
    raw = _with(raw, "vault.refreshInterval", "15m")
    settings = parse_settings("staging", raw)
    assert inputs.access_input(settings).timeouts_ms["admin"] == 120_000
    assert settings.vault.refresh_interval == "15m"


def test_service_timeout_uses_the_same_syntax() -> None:
    raw = _with(_STAGING, "services", [{"name": "etl", "statementTimeout": "1m30s"}])
    settings = parse_settings("staging", raw)
    (etl,) = inputs.access_input(settings).services
    assert etl.statement_timeout_ms == 90_000
    bad = _with(_STAGING, "services", [{"name": "etl", "statementTimeout": "90"}])
    problem = _only_problem("staging", bad)
    assert problem.startswith("pgplatform:services[0].statementTimeout:")


def test_days_reach_external_secrets_as_a_go_duration() -> None:
    settings = parse_settings("prod", _with(_PROD, "vault.refreshInterval", "1d"))
    assert settings.vault.refresh_interval == "24h"
    problem = _only_problem("prod", _with(_PROD, "vault.refreshInterval", "2d"))
    assert problem.startswith("pgplatform:vault.refreshInterval:")


@pytest.mark.parametrize(
    ("written", "cnpg"), [("30d", "30d"), ("4w", "4w"), ("720h", "30d"), ("2w3d", "17d")]
)
def test_retention_in_the_config_syntax(written: str, cnpg: str) -> None:
    settings = parse_settings("prod", _with(_PROD, "backup.retention", written))
    store = inputs.backup_store(settings)
    assert store is not None
    assert store.retention == cnpg


def test_retention_in_months_is_refused_not_read_as_minutes() -> None:
    """CloudNativePG reads '6m' as six months; the config syntax reads minutes: refuse it."""
    problem = _only_problem("prod", _with(_PROD, "backup.retention", "6m"))
    assert problem.startswith("pgplatform:backup.retention:")
    assert "days" in problem


def test_duration_conversions() -> None:
    assert duration_ms("500ms") == 500
    assert duration_ms("1h30m") == 5_400_000
    assert go_duration("1d") == "24h"
    assert go_duration("90s") == "1m30s"


# --- publicBaseUrl -----------------------------------------------------------------------------


def test_trailing_slash_on_public_base_url_says_what_to_write() -> None:
    problem = _only_problem("prod", _with(_PROD, "publicBaseUrl", "https://api.example.com/"))
    assert problem.startswith("pgplatform:publicBaseUrl:")
    assert "drop the trailing '/'" in problem
    assert "'https://api.example.com'" in problem
    assert "pattern" not in problem


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("http://api.example.com", "'https://'"),
        ("https://api.example.com/v1", "only the scheme and host"),
    ],
)
def test_public_base_url_messages(value: str, hint: str) -> None:
    problem = _only_problem("prod", _with(_PROD, "publicBaseUrl", value))
    assert problem.startswith("pgplatform:publicBaseUrl:")
    assert hint in problem
    assert "pattern" not in problem


# --- what settings accepts, the program builds ---------------------------------------------------


def test_number_quantities_render_as_text(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    config, secrets = stack_config("staging")
    domains = decode_config_value(config["pgplatform:domains"])
    domains["content"]["resources"] = {"limits": {"cpu": 1}}
    config["pgplatform:domains"] = json.dumps(domains)
    mocks = run_program(pulumi_mocks, "staging", config, secrets)
    deployments = [
        r
        for r in mocks.by_type("kubernetes:apps/v1:Deployment")
        if "content" in json.dumps(r.inputs["metadata"])
    ]
    assert deployments
    containers = deployments[0].inputs["spec"]["template"]["spec"]["containers"]
    limits = {c["resources"]["limits"]["cpu"] for c in containers if c["name"] == "postgrest"}
    assert limits == {"1"}


# --- values components check are checked where the config is read -----------------------------

_EXTERNAL = {
    "mode": "external",
    "host": "db.example.com",
    "roHost": "db-ro.example.com",
    "caSecret": "db-ca",
}


def _external(**changes: str) -> dict[str, Any]:
    raw = _with(_PROD, "postgres", {**_EXTERNAL, **changes})
    return _with(raw, "backup", {"enabled": False})


@pytest.mark.parametrize("host", ["db.example.com:5432", "https://db.example.com", "db_1.example"])
def test_database_host_is_a_host_name(host: str) -> None:
    problems = _problems("prod", _external(host=host), ("postgresAdminPassword",))
    assert any(p.startswith("pgplatform:postgres.host: must be a host name") for p in problems)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("auth.audience", "my api"),
        ("auth.audience", "x:y z"),
        ("publicBaseUrl", "https://api_x.example.com"),
        ("postgres.storageClass", "Fast SSD"),
        ("backup.endpointUrl", "https://s3 .example.com"),
        ("gateway.sectionName", "Https Listener"),
    ],
)
def test_values_the_manifests_carry_are_checked_in_settings(key: str, value: str) -> None:
    problem = _only_problem("prod", _with(_PROD, key, value))
    assert problem.startswith(f"pgplatform:{key}:")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("auth.audience", "urn:example:pgplatform"),
        ("publicBaseUrl", "https://api.example.com:8443"),
        ("gateway.sectionName", "https"),
    ],
)
def test_edge_values_settings_accept_build(
    pulumi_mocks: Callable[..., RecordingMocks], key: str, value: str
) -> None:
    config, secrets = stack_config("prod")
    top, *rest = key.split(".")
    name = f"pgplatform:{top}"
    if rest:
        body = decode_config_value(config.get(name, "{}"))
        body = {**body, rest[0]: value}
        config[name] = json.dumps(body)
    else:
        config[name] = value
    mocks = run_program(pulumi_mocks, "prod", config, secrets)
    assert mocks.by_type("kubernetes:apps/v1:Deployment")


@pytest.mark.parametrize(
    ("key", "value", "reported"),
    [
        ("graphql.schemas", ["identity", "identity"], "graphql.schemas"),
        ("services", [{"name": "etl", "schemas": ["content", "content"]}], "services[0].schemas"),
        ("vault.kubernetesAuthPath", "/kubernetes/", "vault.kubernetesAuthPath"),
    ],
)
def test_lists_and_paths_components_would_refuse(key: str, value: Any, reported: str) -> None:
    problem = _only_problem("staging", _with(_STAGING, key, value))
    assert problem.startswith(f"pgplatform:{reported}:")


@pytest.mark.parametrize("value", [2, "2", "100Ki"])
def test_memory_without_a_unit_is_not_taken_as_bytes(value: Any) -> None:
    """`pulumi config set --path ...memory 2` stores 2, which Kubernetes reads as two bytes."""
    problem = _only_problem("staging", _with(_STAGING, "postgres.resources.limits.memory", value))
    assert problem.startswith("pgplatform:postgres.resources.limits.memory:")
    assert "'2Gi'" in problem or "'100Gi'" in problem


@pytest.mark.parametrize("value", ["512Mi", "1Gi", "2G", 1_073_741_824])
def test_memory_sizes_pass(value: Any) -> None:
    raw = _with(_STAGING, "postgres.storageSize", value)
    assert parse_settings("staging", raw).postgres.storage_size == str(value)


def test_pgbouncer_timeouts_are_durations_too() -> None:
    problem = _only_problem("staging", _with(_STAGING, "pgbouncer.queryWaitTimeout", 30))
    assert problem.startswith("pgplatform:pgbouncer.queryWaitTimeout:")
    assert "'30s'" in problem
    raw = _with(_STAGING, "pgbouncer.queryWaitTimeout", "2m")
    raw = _with(raw, "pgbouncer.serverIdleTimeout", "1h")
    pool = inputs.pgbouncer_pool_settings(parse_settings("staging", raw))
    assert (pool.query_wait_timeout, pool.server_idle_timeout) == (120, 3600)
    problem = _only_problem("staging", _with(_STAGING, "pgbouncer.queryWaitTimeout", "2h"))
    assert problem.startswith("pgplatform:pgbouncer.queryWaitTimeout:")
    assert "1h" in problem
