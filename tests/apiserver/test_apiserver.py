"""Both rendered stacks against a real kube-apiserver with the upstream CRDs installed.

Schema validation (tests/integration/test_manifests.py) cannot run CRD CEL rules, defaulting,
admission policies or RBAC; the API server does. Every object of each stack is applied with
server-side apply (strict field validation), read back as the server stored it (defaults filled
in), and the project's own policy rules must still hold on that stored form. The restore check's
admission policy is proven both ways with the restore check's own service account.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy import rules
from tests.apiserver.harness import ApiServer, binaries, running_apiserver
from tests.conftest import STACKS
from tests.crd_schema import crd_dir
from tests.policy_support import deployed_view

pytestmark = pytest.mark.apiserver

NAMESPACE = "pgplatform"
FIELD_MANAGER = "pgplatform"

APPLY_ORDER = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "SecretStore",
    "ExternalSecret",
    "Service",
    "Cluster",
    "ScheduledBackup",
    "Deployment",
    "Job",
    "CronJob",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "HTTPRoute",
    "PodMonitor",
    "ServiceMonitor",
    "PrometheusRule",
)
"""What an object needs exists before it: identities and config before the workloads that use
them, an admission policy before its binding, workloads before what selects or scales them."""


def _order(kind: str) -> int:
    return APPLY_ORDER.index(kind) if kind in APPLY_ORDER else len(APPLY_ORDER)


def _manifests(build: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = [
        (p, yaml.safe_load(p.read_text())) for p in sorted((build / "manifests").glob("*.yaml"))
    ]
    return sorted(found, key=lambda item: (_order(item[1]["kind"]), item[0].name))


@pytest.fixture(scope="module")
def apiserver() -> Iterator[ApiServer]:
    """The API server with every shared CRD established and the stacks' namespace created."""
    bin_dir = binaries()
    with running_apiserver(bin_dir) as server:
        server.install(crd_dir(), NAMESPACE, field_manager=FIELD_MANAGER)
        yield server


def _type_token(manifest: dict[str, Any]) -> str:
    api_version = manifest["apiVersion"]
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{manifest['kind']}"


def test_every_crd_is_established(apiserver: ApiServer) -> None:
    expected = {
        yaml.safe_load(path.read_text())["metadata"]["name"] for path in crd_dir().glob("*.yaml")
    }
    served = apiserver.get_json("crd")["items"]
    established = {
        item["metadata"]["name"]
        for item in served
        if any(
            c["type"] == "Established" and c["status"] == "True"
            for c in item.get("status", {}).get("conditions", [])
        )
    }
    assert expected
    assert expected <= established


@pytest.mark.parametrize("stack", STACKS)
def test_stack_applies_and_stored_objects_keep_invariants(
    apiserver: ApiServer, rendered_stack: Callable[[str], Path], stack: str
) -> None:
    build = rendered_stack(stack)
    manifests = _manifests(build)
    files = [arg for path, _ in manifests for arg in ("-f", str(path))]
    try:
        result = apiserver.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "--validate=strict",
            *files,
        )
        assert result.returncode == 0, f"objects refused by the API server:\n{result.stderr}"
        stored = apiserver.get_json(*files)["items"]
        by_key = {(_type_token(live), live["metadata"]["name"]): live for live in stored}
        assert len(by_key) == len(manifests)

        # The server's stored form (defaults applied) still has every label the render set.
        for path, manifest in manifests:
            live = by_key[(_type_token(manifest), manifest["metadata"]["name"])]
            wanted = manifest["metadata"].get("labels") or {}
            have = live["metadata"].get("labels") or {}
            assert wanted.items() <= have.items(), path.name

        # Every policy rule over the stack, the Kubernetes objects replaced by what the server
        # stored: hardening, probes and selectors survive defaulting.
        resources = []
        replaced = 0
        for resource_type, name, props in deployed_view(build):
            key = (resource_type, props.get("metadata", {}).get("name"))
            live = by_key.get(key)
            replaced += live is not None
            resources.append((resource_type, name, props if live is None else live))
        assert replaced == len(stored)
        assert rules.validate_stack(resources, rules.environment_of(stack)) == []
    finally:
        apiserver.kubectl("delete", "--ignore-not-found", "--wait=false", *files)


# --- the restore check's admission policy ----------------------------------------------------


def _restore_check(build: Path) -> tuple[list[Path], str, dict[str, Any]]:
    """(manifests of the restore check's identity and policy, its user name, its Cluster)."""
    wanted = []
    service_account = None
    for path, manifest in _manifests(build):
        labels = manifest["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/name") != "restore-check":
            continue
        if manifest["kind"] in {
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        }:
            wanted.append(path)
        if manifest["kind"] == "RoleBinding":
            (subject,) = manifest["subjects"]
            service_account = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    (cluster_file,) = (build / "files").glob("*restore-check*/cluster.json")
    assert service_account is not None
    assert len(wanted) == 5
    return wanted, service_account, json.loads(cluster_file.read_text())


@pytest.fixture(scope="module")
def restore_policy(
    apiserver: ApiServer, rendered_stack: Callable[[str], Path]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The prod restore check's account, role and admission policy applied; (user, Cluster)."""
    paths, user, cluster = _restore_check(rendered_stack("prod"))
    files = [arg for path in paths for arg in ("-f", str(path))]
    apiserver.ok("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", *files)
    yield user, cluster
    apiserver.kubectl("delete", "--ignore-not-found", *files)


def _create_as(apiserver: ApiServer, user: str, cluster: dict[str, Any]) -> tuple[int, str]:
    result = apiserver.kubectl("create", "-f", "-", stdin=json.dumps(cluster), user=user)
    return result.returncode, result.stderr


def _refused_until_policy_is_active(
    apiserver: ApiServer, user: str, cluster: dict[str, Any]
) -> str:
    """Create ``cluster`` (which the policy must refuse) until the policy answers; its message.

    A new policy is enforced once the server's policy informer has compiled it (about a second);
    before that the create would be admitted, so an admitted attempt is deleted and retried.
    """
    for _ in range(60):
        code, stderr = _create_as(apiserver, user, cluster)
        if code != 0 and "ValidatingAdmissionPolicy" in stderr:
            return stderr
        if code == 0:
            apiserver.kubectl("delete", "-n", NAMESPACE, "cluster", cluster["metadata"]["name"])
        else:
            pytest.fail(f"refused, but not by the admission policy:\n{stderr}")
        time.sleep(1.0)
    pytest.fail("the admission policy never refused the Cluster")


def test_policy_refuses_another_cluster_name(
    apiserver: ApiServer, restore_policy: tuple[str, dict[str, Any]]
) -> None:
    user, cluster = restore_policy
    renamed = copy.deepcopy(cluster)
    renamed["metadata"]["name"] = "postgres-db-copy"
    message = _refused_until_policy_is_active(apiserver, user, renamed)
    assert "the restore check may only create the Cluster postgres-db-restored" in message


def test_policy_refuses_another_shape(
    apiserver: ApiServer, restore_policy: tuple[str, dict[str, Any]]
) -> None:
    user, cluster = restore_policy
    for change, expected in (
        (lambda c: c["spec"].update(instances=3), "the recovery Cluster has exactly one instance"),
        (
            lambda c: c["spec"].update(bootstrap={"initdb": {"database": "app"}}),
            "the Cluster must bootstrap by recovery from the object store",
        ),
    ):
        changed = copy.deepcopy(cluster)
        change(changed)
        message = _refused_until_policy_is_active(apiserver, user, changed)
        assert expected in message


def test_policy_admits_the_restore_checks_cluster(
    apiserver: ApiServer, restore_policy: tuple[str, dict[str, Any]]
) -> None:
    user, cluster = restore_policy
    # Prove the policy is enforcing first, so the admission below is the policy's yes.
    renamed = copy.deepcopy(cluster)
    renamed["metadata"]["name"] = "postgres-db-other"
    _refused_until_policy_is_active(apiserver, user, renamed)

    code, stderr = _create_as(apiserver, user, cluster)
    assert code == 0, stderr
    # The restore check's own role covers the script's other calls on its Cluster.
    name = cluster["metadata"]["name"]
    for args in (
        ("get", "cluster", name, "--ignore-not-found", "-o", "name"),
        ("delete", "cluster", name, "--ignore-not-found", "--wait=false"),
    ):
        result = apiserver.kubectl("--namespace", NAMESPACE, *args, user=user)
        assert result.returncode == 0, result.stderr
    assert apiserver.ok("get", "-n", NAMESPACE, "clusters", "-o", "name") == ""
