"""The advisor's scheduled run: an image of exactly the advisor with the pinned libraries, a tag
that follows its files, a hardened CronJob failing on error findings, its alert only where it
runs, and config errors naming ``advisor.*``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from components.render import advisor_job as aj
from components.render import pods
from components.render.baseline_job import BaselineJobSpec
from components.render.graphql_image import parse_dockerfile
from components.render.pgbouncer_pool import DatabaseEgress
from components.settings import SettingsError
from tests.conftest import ROOT, stack_config
from tests.unit.test_graphql_pilot import run, settings_of
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

IMAGE = "registry.internal.example.com/pgplatform/postgres-advisor:0123456789ab"
CRONJOB = "kubernetes:batch/v1:CronJob"
RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"


def connection(**change: Any) -> BaselineJobSpec:
    values: dict[str, Any] = {
        "namespace": "pgplatform",
        "host": "postgres-db-rw.pgplatform.svc.cluster.local",
        "port": 5432,
        "database": "app",
        "sslmode": "require",
        "admin_secret": "postgres-admin-secrets",
        "egress": DatabaseEgress(port=5432, cluster="postgres-db"),
    }
    return BaselineJobSpec(**(values | change))


def job_input(**change: Any) -> aj.AdvisorJobInput:
    values: dict[str, Any] = {"connection": connection(), "schedule": "0 5 * * 1", "image": IMAGE}
    return aj.AdvisorJobInput(**(values | change))


# -- the image -------------------------------------------------------------------------------------


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)", line.strip())
        if match:
            pins[match[1]] = match[2]
    return pins


def test_the_image_installs_the_versions_the_tests_run_with() -> None:
    pinned = aj.pinned_packages()
    expected = {name: requirement_pins()[name] for name in aj.PACKAGES}
    assert pinned == expected


def test_the_image_copies_every_module_of_the_advisor_and_nothing_else() -> None:
    copied = set(aj.image_files()) - {aj.DOCKERFILE}
    modules = {f"advisor/{p.name}" for p in (ROOT / "tools" / "advisor").glob("*.py")}
    assert copied == modules | {"__init__.py"}


def test_the_image_starts_from_an_exact_python_311_release_as_the_pod_user() -> None:
    instructions = parse_dockerfile((aj.TOOLS_DIR / aj.DOCKERFILE).read_text())
    (base,) = [i.argument for i in instructions if i.keyword == "FROM"]
    assert re.fullmatch(r"docker\.io/library/python:3\.11\.[0-9]+-slim-[a-z]+", base), base
    (user,) = [i.argument for i in instructions if i.keyword == "USER"]
    assert user == f"{pods.DEFAULT_UID}:{pods.DEFAULT_UID}"
    (entrypoint,) = [i.argument for i in instructions if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == aj.advisor_command()[:3]


def copy_tools(tmp_path: Path) -> Path:
    tools = tmp_path / "tools"
    shutil.copytree(aj.TOOLS_DIR / "advisor", tools / "advisor")
    shutil.copy(aj.TOOLS_DIR / "__init__.py", tools / "__init__.py")
    return tools


def test_the_tag_changes_with_the_advisor_and_not_with_other_files(tmp_path: Path) -> None:
    tools = copy_tools(tmp_path)
    tag = aj.image_tag(tools)
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    (tools / "render.py").write_text("# another tool\n")
    assert aj.image_tag(tools) == tag
    report = tools / "advisor" / "report.py"
    report.write_text(report.read_text() + "\n# changed\n")
    assert aj.image_tag(tools) != tag


def test_an_unpinned_package_is_refused(tmp_path: Path) -> None:
    tools = copy_tools(tmp_path)
    dockerfile = tools / aj.DOCKERFILE
    dockerfile.write_text(dockerfile.read_text().replace('"pglast==8.7"', "pglast"))
    with pytest.raises(ValueError, match=r"'pglast' is not pinned"):
        aj.image_tag(tools)


def test_the_default_reference_is_the_repository_and_the_tag() -> None:
    assert aj.default_reference("registry.example.com/a/b") == (
        f"registry.example.com/a/b:{aj.image_tag()}"
    )
    with pytest.raises(ValueError, match=r"repository: .*name the registry host"):
        aj.default_reference("pgplatform/advisor")


# -- the CronJob -----------------------------------------------------------------------------------


def test_the_cronjob_fails_on_error_findings_once_and_keeps_the_failed_job() -> None:
    spec = aj.cronjob_spec(job_input())
    assert spec["schedule"] == "0 5 * * 1"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert "ttlSecondsAfterFinished" not in job  # the alert reads the failed Job
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "python", "-m", "tools.advisor", "--dsn", "", "--json", "-", "--fail-on", "error",
    ]  # fmt: skip
    assert container["image"] == IMAGE
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job["template"]["metadata"]["labels"] == aj.labels()


def test_credentials_come_from_the_admin_secret_only() -> None:
    spec = aj.cronjob_spec(job_input())
    (container,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    for name, key in (("PGUSER", "username"), ("PGPASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": "postgres-admin-secrets",
            "key": key,
        }
    assert env["PGAPPNAME"]["value"] == "pgplatform-advisor"
    # The server keeps the admin's session read-only.
    assert env["PGOPTIONS"]["value"] == "-c default_transaction_read_only=on"
    assert "volumeMounts" not in container


def test_verify_full_mounts_the_database_ca() -> None:
    inp = job_input(connection=connection(sslmode="verify-full", ca_secret="postgres-db-ca"))
    pod = aj.cronjob_spec(inp)["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PGSSLMODE"] == "verify-full"
    (mount,) = container["volumeMounts"]
    assert env["PGSSLROOTCERT"].startswith(mount["mountPath"] + "/")
    (volume,) = pod["volumes"]
    assert volume["secret"]["secretName"] == "postgres-db-ca"


def test_the_pod_reaches_the_database_and_dns_only() -> None:
    spec = aj.network_policy_body(job_input())["spec"]
    assert spec["podSelector"] == {"matchLabels": aj.selector()}
    assert spec["ingress"] == []
    database, dns = spec["egress"]
    assert database == {
        "to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "postgres-db"}}}],
        "ports": [{"protocol": "TCP", "port": 5432}],
    }
    assert {p["port"] for p in dns["ports"]} == {53}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schedule": "0 5 * *"}, r"^schedule: '0 5 \* \*' has 4 fields"),
        ({"image": "ghcr.io/pgplatform/postgres-advisor:latest"}, r"^image: .*'latest'"),
        ({"timeout_seconds": 10}, r"^timeout_seconds: 60\.\.21600"),
    ],
)
def test_input_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        job_input(**change)


# -- the stacks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def programs() -> dict[str, Any]:
    return {
        "staging": run("staging"),
        "prod": run("prod"),
        "prod-advisor": run("prod", advisor={"enabled": True, "image": IMAGE}),
        "staging-off": run("staging", advisor={"enabled": False}),
    }


def cronjobs(mocks: RecordingMocks) -> list[dict[str, Any]]:
    return [
        r.inputs
        for r in mocks.by_type(CRONJOB)
        if r.inputs["metadata"].get("name") == aj.CRONJOB_NAME
    ]


def alert_names(mocks: RecordingMocks) -> set[str]:
    (rule,) = [r.inputs for r in mocks.by_type(RULE)]
    return {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def test_staging_runs_the_image_of_this_tree_weekly(programs: dict[str, Any]) -> None:
    mocks, _ = programs["staging"]
    (cronjob,) = cronjobs(mocks)
    assert cronjob["spec"]["schedule"] == "0 5 * * 1"
    containers = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in containers} == {aj.default_reference()}
    assert "PostgresAdvisorFindings" in alert_names(mocks)
    # Staging serves analytics from the CDC database: a second container checks it there.
    by_name = {c["name"]: c for c in containers}
    assert set(by_name) == {"advisor", "advisor-analytics"}
    env = {name: {e["name"]: e.get("value") for e in c["env"]} for name, c in by_name.items()}
    assert env["advisor"]["PGDATABASE"] == "app"
    assert env["advisor-analytics"]["PGDATABASE"] == "analytics"
    assert by_name["advisor"]["command"] == aj.advisor_command()
    assert "--schema=analytics" in by_name["advisor-analytics"]["command"]


def test_prod_runs_the_pushed_image_once_enabled(programs: dict[str, Any]) -> None:
    mocks, _ = programs["prod"]
    assert cronjobs(mocks) == []
    assert "PostgresAdvisorFindings" not in alert_names(mocks)
    mocks, _ = programs["prod-advisor"]
    (cronjob,) = cronjobs(mocks)
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PGSSLMODE"] == "verify-full"
    assert "PostgresAdvisorFindings" in alert_names(mocks)


def test_disabled_means_no_cronjob_and_no_alert(programs: dict[str, Any]) -> None:
    mocks, _ = programs["staging-off"]
    assert cronjobs(mocks) == []
    assert "PostgresAdvisorFindings" not in alert_names(mocks)


def test_prod_refuses_the_advisor_without_its_image() -> None:
    config, secrets = stack_config("prod")
    config["pgplatform:advisor"] = json.dumps({"enabled": True})
    with pytest.raises(SettingsError, match=r"pgplatform:advisor\.image: prod runs the advisor"):
        settings_of("prod", config, secrets)


@pytest.mark.parametrize(
    ("value", "key", "hint"),
    [
        ({"image": "ghcr.io/pgplatform/postgres-advisor"}, "image", "pin a tag or a digest"),
        ({"schedule": "weekly"}, "schedule", "has 1 fields"),
        ({"enabled": "sometimes"}, "enabled", "bool"),
    ],
)
def test_bad_advisor_settings_name_the_key(value: dict[str, Any], key: str, hint: str) -> None:
    config, secrets = stack_config("staging")
    config["pgplatform:advisor"] = json.dumps(value)
    with pytest.raises(SettingsError, match=rf"pgplatform:advisor\.{key}: ") as caught:
        settings_of("staging", config, secrets)
    assert hint in str(caught.value)


def test_a_further_database_gets_its_own_container_with_its_schemas() -> None:
    other = aj.AdvisedDatabase(database="analytics_copy", schemas=("analytics", "reports"))
    pod = aj.cronjob_spec(job_input(others=(other,)))["jobTemplate"]["spec"]["template"]["spec"]
    first, second = pod["containers"]
    assert second["name"] == "advisor-analytics-copy"
    assert second["command"] == aj.advisor_command(("analytics", "reports"))
    assert "--schema=reports" in second["command"]
    env = {e["name"]: e.get("value") for e in second["env"]}
    assert env["PGDATABASE"] == "analytics_copy"
    assert env["PGOPTIONS"] == aj.READ_ONLY_OPTIONS
    assert {e["name"]: e.get("value") for e in first["env"]}["PGDATABASE"] == "app"
    with pytest.raises(ValueError, match="at least one served schema"):
        aj.AdvisedDatabase(database="analytics", schemas=())
