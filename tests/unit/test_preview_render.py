"""The preview-mode render: what a first ``pulumi preview`` shows of every Kubernetes object.

On a real preview, a value only known once a resource exists (a generated name, a random
password and every checksum of it) is unknown, and so is anything the program computes from it
inside ``apply``. These tests run the program with the mocks in preview mode and assert, object
by object, that only single leaves are unknown, and exactly which ones: a change that moves a
whole spec back into ``apply`` (or adds a new unknown) fails here with the object's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import STACKS, run_program
from tools.mocks import UNKNOWN, RecordingMocks, redact

pytestmark = pytest.mark.unit

SECRETS_CHECKSUM = "pgplatform.io/secrets-checksum"
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    # The audit exporter reads the admin Secret by reference only: no secrets checksum.
    ("Deployment", r"audit-export-deployment"): frozenset(
        {"spec.template.spec.volumes[*].configMap.name"}
    ),
    # Every workload: its generated ConfigMap's name and the keyed checksum of its secrets.
    ("Deployment", r".*-deployment"): frozenset(
        {
            f"spec.template.metadata.annotations.{SECRETS_CHECKSUM}",
            "spec.template.spec.volumes[*].configMap.name",
        }
    ),
    # Vault-synced Secrets: the store's generated name and the checksum that triggers a sync.
    ("ExternalSecret", r".*-external"): frozenset(
        {f"metadata.annotations.{SECRETS_CHECKSUM}", "spec.secretStoreRef.name"}
    ),
    # The synthetic checks' exporter: its generated config ConfigMap (no secrets).
    ("Deployment", r"observability-blackbox"): frozenset(
        {"spec.template.spec.volumes[*].configMap.name"}
    ),
    ("ExternalSecret", r".*-jwks"): frozenset({"spec.secretStoreRef.name"}),
    ("Cluster", r"postgres-cluster"): frozenset({"spec.monitoring.customQueriesConfigMap[*].name"}),
    (
        "Job",
        r"(sql-baseline(-copies)?|sql-baseline(-copies)?-migrations|cdc)-job-[0-9a-f]+",
    ): frozenset({"spec.template.spec.volumes[*].configMap.name"}),
    ("CronJob", r"backups-restore-check"): frozenset(
        {"spec.jobTemplate.spec.template.spec.volumes[*].configMap.name"}
    ),
    ("RoleBinding", r"backups-restore-check-binding"): frozenset({"roleRef.name"}),
    ("ValidatingAdmissionPolicyBinding", r"backups-restore-check-policy-binding"): frozenset(
        {"spec.policyName"}
    ),
}
"""(kind, logical name) → the paths unknown at preview (list indexes as ``[*]``)."""
FIXED_NAMES = {
    "Deployment": {"identity-api", "content-api", "analytics-api", "pgbouncer"},
    "Service": {"identity-api", "content-api", "analytics-api", "pgbouncer"},
    "HorizontalPodAutoscaler": {"identity-api", "content-api", "analytics-api"},
}


def unknown_paths(value: Any, path: str = "") -> Iterator[str]:
    if value == UNKNOWN:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from unknown_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unknown_paths(item, f"{path}[{index}]")


def at(value: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path.replace(f".{SECRETS_CHECKSUM}", "")):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    if SECRETS_CHECKSUM in path:
        value = value[SECRETS_CHECKSUM]
    return value


def expected_for(kind: str, name: str) -> frozenset[str]:
    for (expected_kind, pattern), paths in EXPECTED.items():
        if expected_kind == kind and re.fullmatch(pattern, name):
            return paths
    return frozenset()


def objects(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    """Logical name → the manifest (inputs, with metadata as the engine answered)."""
    return {
        r.name: redact({**r.inputs, "metadata": r.outputs.get("metadata", {})})
        for r in mocks.kubernetes()
    }


@pytest.fixture(params=STACKS)
def renders(
    request: pytest.FixtureRequest, pulumi_mocks: Callable[..., RecordingMocks]
) -> tuple[str, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    stack = str(request.param)
    known = objects(run_program(pulumi_mocks, stack))
    preview = objects(run_program(pulumi_mocks, stack, preview=True))
    return stack, known, preview


def test_only_leaves_are_unknown_and_exactly_the_expected_ones(
    renders: tuple[str, dict[str, dict[str, Any]], dict[str, dict[str, Any]]],
) -> None:
    stack, known, preview = renders
    assert set(known) == set(preview), "a preview must register the same objects"
    problems = []
    seen: set[tuple[str, str]] = set()
    for name, manifest in preview.items():
        kind = manifest["kind"]
        body = {k: v for k, v in manifest.items() if k != "metadata"}
        body["metadata"] = {k: v for k, v in manifest["metadata"].items() if k != "name"}
        paths = set(unknown_paths(body))
        for path in paths:
            if isinstance(at(known[name], path), dict | list):
                problems.append(f"{kind} {name}: {path} is a whole object unknown at preview")
        generic = {re.sub(r"\[\d+\]", "[*]", p) for p in paths}
        expected = expected_for(kind, name)
        if generic != expected:
            problems.append(
                f"{kind} {name}: unknown {sorted(generic)}, expected {sorted(expected)}"
            )
        if generic:
            seen.add((kind, name))
    assert not problems, f"{stack}:\n" + "\n".join(problems)
    kinds = {kind for kind, _ in seen}
    assert {"Deployment", "ExternalSecret", "Cluster", "Job"} <= kinds


def test_generated_names_are_unknown_and_fixed_names_known(
    renders: tuple[str, dict[str, dict[str, Any]], dict[str, dict[str, Any]]],
) -> None:
    stack, known, preview = renders
    for name, manifest in preview.items():
        given = known[name]["metadata"]["name"]
        if given.startswith(f"{name}-"):  # generated by the provider (logical name + suffix)
            assert manifest["metadata"]["name"] == UNKNOWN, name
        else:
            assert manifest["metadata"]["name"] == given, name
    for kind, names in FIXED_NAMES.items():
        present = {m["metadata"]["name"] for m in preview.values() if m["kind"] == kind}
        assert names <= present, f"{stack}: {kind} {sorted(names - present)} not fixed"


def test_a_spec_computed_inside_apply_is_caught() -> None:
    """The check flags a whole object unknown, as a spec built in ``apply`` would be."""
    known: dict[str, Any] = {"spec": {"template": {"spec": {"containers": []}}}}
    [path] = unknown_paths({"spec": UNKNOWN})
    assert isinstance(at(known, path), dict)
