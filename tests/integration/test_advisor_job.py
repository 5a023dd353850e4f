"""The advisor's CronJob, replayed on a real PostgreSQL 15 with the staging render.

The database goes through what a cluster goes through (the superuser bootstrap, the access plan,
the baseline Job as the admin role), then the example domains. The rendered CronJob's container
command runs with the rendered environment and the admin's credentials, over TLS with the
stack's sslmode; only host and port differ from the manifest (and ``python`` is this
interpreter, run from the repository as the image runs it from ``/app``). The Job's status is
the command's exit status: 0 on the platform's own schemas, non-zero once a table of an exposed
schema gets a policy that lets any row in, with the JSON report on stdout and the summary on
stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from components.render.advisor_job import CRONJOB_NAME
from tests.conftest import ROOT
from tests.integration.pg import PgCluster, running_cluster
from tests.integration.test_baseline_job import (
    ADMIN,
    ADMIN_PASSWORD,
    Rendered,
    access_plan,
    bootstrap,
    fresh_database,
    rendered,
    run_job,
)

pytestmark = pytest.mark.integration

FIXTURES: Final = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def staging(rendered_stack: Callable[[str], Path]) -> Iterator[tuple[Rendered, PgCluster]]:
    with running_cluster(tls_only=True) as cluster:
        with cluster.connect() as conn:
            # What CloudNativePG creates: the admin as a managed role (CREATEROLE, no superuser).
            conn.execute(
                f"CREATE ROLE {ADMIN} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS "
                f"PASSWORD '{ADMIN_PASSWORD}'"
            )
        yield rendered(rendered_stack("staging")), cluster


def platform_database(r: Rendered, cluster: PgCluster, name: str) -> None:
    """The stack's database as the cluster leaves it, plus the example domains."""
    fresh_database(cluster, name)
    bootstrap(r, cluster, name)
    access_plan(r, cluster, name)
    baseline = run_job(r, cluster, name)
    assert baseline.returncode == 0, baseline.stderr
    cluster.apply_sql(name, [(p.name, p.read_text()) for p in sorted(FIXTURES.glob("*.sql"))])


def advisor_container(build: Path, name: str = "advisor") -> dict[str, Any]:
    manifest = yaml.safe_load((build / "manifests" / f"cronjob_{CRONJOB_NAME}.yaml").read_text())
    containers = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == name]
    return dict(container)


def run_cronjob(
    build: Path,
    cluster: PgCluster,
    database: str | None = None,
    *,
    container_name: str = "advisor",
    admin: tuple[str, str] = (ADMIN, ADMIN_PASSWORD),
) -> subprocess.CompletedProcess[str]:
    """A container of the CronJob: its command with its environment (its database unless
    ``database`` names another) and the admin's credentials."""
    container = advisor_container(build, container_name)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cluster.base)}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            key = item["valueFrom"]["secretKeyRef"]["key"]
            env[item["name"]] = {"username": admin[0], "password": admin[1]}[key]
    env |= {"PGHOST": cluster.host, "PGPORT": str(cluster.port)}
    if database is not None:
        env["PGDATABASE"] = database
    command = container["command"]
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def totals_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("advisor: database ")]
    return line


def test_the_platform_schemas_pass(staging: tuple[Rendered, PgCluster]) -> None:
    r, cluster = staging
    platform_database(r, cluster, "app")
    result = run_cronjob(r.build, cluster, "app")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    assert set(report["schemas"]) >= {"identity", "content"}
    assert "error=0 " in totals_line(result.stderr)


def test_a_policy_letting_any_row_in_fails_the_job(staging: tuple[Rendered, PgCluster]) -> None:
    r, cluster = staging
    platform_database(r, cluster, "app_planted")
    with cluster.connect("app_planted") as conn:
        # The RLS guard turns row-level security on; the policy lets users write any row.
        conn.execute("CREATE TABLE content.drafts (id int PRIMARY KEY, author text)")
        conn.execute("GRANT SELECT, INSERT ON content.drafts TO api_user")
        conn.execute(
            "CREATE POLICY drafts_read ON content.drafts FOR SELECT TO api_user "
            "USING (author = (SELECT platform.jwt_sub()))"
        )
        conn.execute(
            "CREATE POLICY drafts_write ON content.drafts FOR INSERT TO api_user WITH CHECK (true)"
        )
    result = run_cronjob(r.build, cluster, "app_planted")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    errors = {(f["check"], f["object"]) for f in report["findings"] if f["severity"] == "error"}
    assert errors == {("with_check_true", "policy drafts_write on content.drafts")}
    assert "ERROR with_check_true policy drafts_write on content.drafts" in result.stderr
    assert "(error=1 " in totals_line(result.stderr)


def test_an_unreachable_database_fails_the_job(staging: tuple[Rendered, PgCluster]) -> None:
    r, cluster = staging
    result = run_cronjob(r.build, cluster, "no_such_database")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "advisor: cannot connect" in result.stderr
