"""The ``local`` stack's Kubernetes objects applied by the real provider to a real API server.

``test_engine.py`` renders the Kubernetes objects to a directory (the GitOps option); here the
same stack, without ``gitops.renderDirectory``, applies them with the real pulumi-kubernetes
provider to the kube-apiserver + etcd of ``tests/apiserver`` (``make apiserver``), next to the
real PostgreSQL and OpenBao the rest of the stack needs. The provider reaches the API server
through the harness's admin kubeconfig, set as the stack's ``kubernetes:kubeconfig``.

No controller runs there, so the entry point is ``controllerless_main.py``: the program's own
``__main__.py`` with two provider annotations on every Kubernetes object (no readiness await,
background deletion); see that module for why. In order (the tests share one deployment):

1. ``pulumi up`` creates every object the offline render declares, read back with kubectl.
2. ``pulumi preview --expect-no-changes``: a second run is a no-op.
3. An in-place change (an API's maximum replicas): previewed as an update of the HPA alone,
   applied, the same object (uid) carries the new value.
4. A change that must replace: the database CA Secret's name is in the pod template of two
   Deployments (updated in place) and of the SQL baseline Job, whose template the API server
   refuses to change; the preview replaces the Job, ``up`` creates the new one and deletes the old.
5. ``pulumi destroy`` leaves none of our objects; the services stop.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.apiserver.harness import ApiServer, built_binaries, running_apiserver
from tests.crd_schema import crd_dir
from tests.e2e.harness import (
    AUTONAME_SUFFIX,
    E2E_DIR,
    ROOT,
    Project,
    Pulumi,
    engine_bin,
    init_stack,
    manifests_by_key,
    offline_render,
    running_services,
)

pytestmark = pytest.mark.e2e

WORKDIR: Final = E2E_DIR / "kubernetes"
NAMESPACE: Final = "pgplatform"
MAIN: Final = ROOT / "tests" / "e2e" / "controllerless_main.py"
SCALED_DOMAIN: Final = "content"
NEXT_CA_SECRET: Final = "pgplatform-db-ca-next"
COMMAND_TIMEOUT: Final = 600.0
"""Seconds per CLI command: an object the provider waits on forever fails the run instead."""

Key = tuple[str, str, str]
"""(apiVersion, kind, metadata.name) of one object."""


@dataclass
class Cluster:
    pulumi: Pulumi
    project: Project
    apiserver: ApiServer
    offline: Path
    seconds: dict[str, float]


def _timed(cluster: Cluster, step: str, *args: str) -> str:
    started = time.monotonic()
    out = cluster.pulumi.stack(step, *args, timeout=COMMAND_TIMEOUT)
    cluster.seconds[step] = round(time.monotonic() - started, 1)
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    engine = engine_bin()
    bin_dir, missing = built_binaries()
    if bin_dir is None:
        # The API server cache is optional for `make e2e`, also in CI: without it this part
        # of the run is skipped and says so; with it, a failure fails the run.
        pytest.skip(f"Kubernetes part of the e2e skipped: {missing}")
    if WORKDIR.exists():
        subprocess.run(["rm", "-rf", str(WORKDIR)], check=True)
    WORKDIR.mkdir(parents=True)
    with running_apiserver(bin_dir) as apiserver, running_services(WORKDIR) as services:
        apiserver.install(crd_dir(), NAMESPACE, field_manager="pgplatform-e2e")
        project = Project(WORKDIR / "project", main=MAIN)
        pulumi = init_stack(
            engine, project, WORKDIR, services, {"kubernetes:kubeconfig": str(apiserver.kubeconfig)}
        )
        offline = offline_render(project, WORKDIR / "offline")
        deployed = Cluster(pulumi, project, apiserver, offline, {})
        _timed(deployed, "up", "up", "--yes", "--skip-preview")
        try:
            yield deployed
        finally:
            if not (WORKDIR / "destroyed").exists():
                pulumi.stack("cleanup-destroy", "destroy", "--yes", "--skip-preview")
            (WORKDIR / "seconds.json").write_text(json.dumps(deployed.seconds, indent=2))


def _state(cluster: Cluster) -> list[dict[str, Any]]:
    """The Kubernetes objects in Pulumi's state (providers left out)."""
    exported = json.loads(cluster.pulumi.stack("export", "stack", "export"))
    resources = exported["deployment"].get("resources") or []
    return [r for r in resources if r["type"].startswith("kubernetes:")]


def _resource_arg(api_version: str, kind: str) -> str:
    """kubectl's ``<kind>.<version>.<group>`` for one type (the bare kind for the core group)."""
    if "/" not in api_version:
        return kind.lower()
    group, version = api_version.split("/")
    return f"{kind.lower()}.{version}.{group}"


def _live(cluster: Cluster, types: set[tuple[str, str]]) -> dict[Key, dict[str, Any]]:
    """Every object of ``types`` in the namespace, as the API server returns it."""
    kinds = ",".join(sorted(_resource_arg(v, k) for v, k in types))
    listing = cluster.apiserver.get_json(kinds, "--namespace", NAMESPACE, "--show-managed-fields")
    return {
        (item["apiVersion"], item["kind"], item["metadata"]["name"]): item
        for item in listing["items"]
    }


def _declared_types(cluster: Cluster) -> set[tuple[str, str]]:
    return {(k[0], k[1]) for k in manifests_by_key(cluster.offline / "manifests")}


def _one(live: dict[Key, dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    found = [o for k, o in live.items() if k[1] == kind and k[2].startswith(prefix)]
    assert len(found) == 1, f"{kind} {prefix}*: {[o['metadata']['name'] for o in found]}"
    return found[0]


def _preview_steps(cluster: Cluster, step: str) -> dict[tuple[str, str], str]:
    """``pulumi preview --json``: the operation per (type, logical name) that is not a no-op."""
    out = json.loads(_timed(cluster, step, "preview", "--json"))
    (WORKDIR / f"{step}.json").write_text(json.dumps(out, indent=2))
    steps: dict[tuple[str, str], str] = {}
    for item in out.get("steps") or []:
        if item["op"] == "same":
            continue
        urn = item["urn"]
        key = (urn.split("::")[-2].split("$")[-1], urn.split("::")[-1])
        assert key not in steps or steps[key] == item["op"], (key, steps.get(key), item["op"])
        steps[key] = item["op"]
    return steps


def _set_config(cluster: Cluster, key: str, value: Any) -> None:
    cluster.project.write_config({key: value})


# -- 1. up -------------------------------------------------------------------------------------
def test_up_creates_every_declared_object(cluster: Cluster) -> None:
    declared = manifests_by_key(cluster.offline / "manifests")
    live = _live(cluster, _declared_types(cluster))
    assert sorted((v, k, AUTONAME_SUFFIX.sub("", n)) for v, k, n in live) == sorted(declared)
    state = {
        (r["outputs"]["apiVersion"], r["outputs"]["kind"], r["outputs"]["metadata"]["name"])
        for r in _state(cluster)
        if not r["type"].startswith("pulumi:providers:")
    }
    assert state == set(live)
    for key, obj in live.items():
        annotations = obj["metadata"].get("annotations") or {}
        assert annotations.get("pulumi.com/skipAwait") == "true", key
        # Server-side apply by the provider: it owns what it set.
        managers = {m["manager"] for m in obj["metadata"].get("managedFields") or []}
        assert any(m.startswith("pulumi-kubernetes") for m in managers), (key, managers)


# -- 2. a second run is a no-op ---------------------------------------------------------------
def test_second_preview_is_a_no_op(cluster: Cluster) -> None:
    _timed(cluster, "preview-again", "preview", "--expect-no-changes", "--diff")


# -- 3. an in-place update --------------------------------------------------------------------
def test_max_replicas_change_updates_the_hpa_in_place(cluster: Cluster) -> None:
    types = _declared_types(cluster)
    before = _one(_live(cluster, types), "HorizontalPodAutoscaler", f"{SCALED_DOMAIN}-api")
    assert before["spec"]["maxReplicas"] == 4
    domains = dict(cluster.project.config()["pgplatform:domains"])
    domains[SCALED_DOMAIN] = {**domains[SCALED_DOMAIN], "replicas": {"min": 2, "max": 5}}
    _set_config(cluster, "pgplatform:domains", domains)

    steps = _preview_steps(cluster, "preview-replicas")
    assert steps == {
        ("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", f"{SCALED_DOMAIN}-api-hpa"): "update"
    }
    _timed(cluster, "up-replicas", "up", "--yes", "--skip-preview")

    after = _one(_live(cluster, types), "HorizontalPodAutoscaler", f"{SCALED_DOMAIN}-api")
    assert after["spec"]["maxReplicas"] == 5
    assert after["metadata"]["uid"] == before["metadata"]["uid"]


# -- 4. a change that must replace ------------------------------------------------------------
def _ca_secret_names(obj: dict[str, Any]) -> list[str]:
    volumes = obj["spec"]["template"]["spec"].get("volumes") or []
    return [v["secret"]["secretName"] for v in volumes if "ca" in v["name"] and "secret" in v]


def test_ca_secret_change_replaces_the_job_and_updates_the_deployments(cluster: Cluster) -> None:
    apiserver = cluster.apiserver
    types = _declared_types(cluster)
    live = _live(cluster, types)
    job = _one(live, "Job", "sql-baseline-job-")
    migrations = _one(live, "Job", "sql-baseline-migrations-job-")
    deployments = {n: _one(live, "Deployment", n) for n in ("pgbouncer", "postgres-exporter")}
    old_secret = _ca_secret_names(job)[0]
    assert old_secret != NEXT_CA_SECRET
    # The API server itself refuses a new pod template for an existing Job.
    refused = apiserver.kubectl(
        "patch", "job", job["metadata"]["name"], "--namespace", NAMESPACE, "--type=merge",
        "--patch", json.dumps({"spec": {"template": {"metadata": {"labels": {"try": "1"}}}}}),
    )  # fmt: skip
    assert refused.returncode != 0
    assert "field is immutable" in refused.stderr, refused.stderr

    postgres = dict(cluster.project.config()["pgplatform:postgres"])
    _set_config(cluster, "pgplatform:postgres", {**postgres, "caSecret": NEXT_CA_SECRET})
    steps = _preview_steps(cluster, "preview-ca-secret")
    assert steps == {
        ("kubernetes:apps/v1:Deployment", "pgbouncer-deployment"): "update",
        ("kubernetes:apps/v1:Deployment", "observability-exporter"): "update",
        # The audit export connects like the Jobs (the same libpq environment and CA mount).
        ("kubernetes:apps/v1:Deployment", "audit-export-deployment"): "update",
        ("kubernetes:batch/v1:Job", AUTONAME_SUFFIX.sub("", job["metadata"]["name"])): "replace",
        # The migrations Job mounts the same CA.
        ("kubernetes:batch/v1:Job", AUTONAME_SUFFIX.sub("", migrations["metadata"]["name"])): (
            "replace"
        ),
    }
    _timed(cluster, "up-ca-secret", "up", "--yes", "--skip-preview")

    live = _live(cluster, types)
    new_job = _one(live, "Job", "sql-baseline-job-")
    assert new_job["metadata"]["name"] != job["metadata"]["name"]
    assert new_job["metadata"]["uid"] != job["metadata"]["uid"]
    assert _ca_secret_names(new_job) == [NEXT_CA_SECRET]
    assert _ca_secret_names(_one(live, "Job", "sql-baseline-migrations-job-")) == [NEXT_CA_SECRET]
    for name, before in deployments.items():
        after = _one(live, "Deployment", name)
        assert after["metadata"]["uid"] == before["metadata"]["uid"], name
        assert _ca_secret_names(after) == [NEXT_CA_SECRET], name
    _timed(cluster, "preview-after-changes", "preview", "--expect-no-changes", "--diff")


# -- 5. destroy -------------------------------------------------------------------------------
def test_destroy_deletes_every_object(cluster: Cluster) -> None:
    _timed(cluster, "destroy", "destroy", "--yes", "--skip-preview")
    (WORKDIR / "destroyed").write_text("")
    assert _live(cluster, _declared_types(cluster)) == {}
    assert _state(cluster) == []
    # The namespace is the cluster's (the harness made it), not the stack's: it stays.
    assert cluster.apiserver.get_json("namespace", NAMESPACE)["status"]["phase"] == "Active"
