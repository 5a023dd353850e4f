"""The policy pack as the Pulumi CLI runs it: ``python -m pulumi.policy`` serving the analyzer
gRPC protocol on 127.0.0.1, asked about resources exactly as the engine asks during a preview.

This covers what the unit tests cannot: ``policy/__main__.py`` importing its rules from the pack
directory, the SDK's deserialisation of props, enforcement levels, and config handling.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime import rpc
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy import rules
from tests.conftest import ROOT, resources_json
from tests.policy_support import deployed_view, urn
from tools.mocks import UNKNOWN as RENDERED_UNKNOWN

pytestmark = pytest.mark.integration

MANDATORY = analyzer_pb2.EnforcementLevel.Value("MANDATORY")
UNKNOWN = rpc.UNKNOWN
"""How the engine sends a value it does not know yet."""
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """The pack started the way the CLI's analyzer plugin starts it, in the pack directory."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."],
        cwd=ROOT / "policy",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _first_line(process, timeout=60)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_line(process: subprocess.Popen[str], timeout: float) -> int:
    """The port the pack prints; the pack's stderr when it died instead."""
    stdout = process.stdout
    assert stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].strip().isdigit():
        process.kill()
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"the policy pack did not start: {line!r}\n{stderr}")
    return int(line[0])


def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(json.loads(json.dumps(props)))
    return message


def _analyze(
    stub: analyzer_pb2_grpc.AnalyzerStub, stack: str, resource_type: str, name: str, props: dict
) -> list[Any]:
    request = analyzer_pb2.AnalyzeRequest(
        type=resource_type,
        properties=_struct(props),
        urn=urn(stack, resource_type, name),
        name=name,
    )
    return list(stub.Analyze(request).diagnostics)


def _analyze_stack(
    stub: analyzer_pb2_grpc.AnalyzerStub, stack: str, resources: list[rules.StackResource]
) -> list[Any]:
    request = analyzer_pb2.AnalyzeStackRequest(
        resources=[
            analyzer_pb2.AnalyzerResource(
                type=resource_type,
                properties=_struct(dict(props)),
                urn=urn(stack, resource_type, name),
                name=name,
            )
            for resource_type, name, props in resources
        ]
    )
    return list(stub.AnalyzeStack(request).diagnostics)


def test_pack_announces_every_rule_as_mandatory(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "pgplatform-security"
    assert [p.name for p in info.policies] == [r.name for r in rules.RULES]
    assert all(p.enforcementLevel == MANDATORY for p in info.policies)


def test_pack_enforces_per_environment(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    anonymous = {"name": "api_anonymous", "login": False, "inherit": False}
    (diagnostic,) = _analyze(analyzer, "prod", rules.ROLE, "access-role-api_anonymous", anonymous)
    assert diagnostic.policyName == "no-anonymous-role-in-prod"
    assert diagnostic.enforcementLevel == MANDATORY
    assert _analyze(analyzer, "staging", rules.ROLE, "access-role-api_anonymous", anonymous) == []


def test_pack_reports_stack_violations(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    labels = {"app.kubernetes.io/name": "worker", "app.kubernetes.io/component": "worker"}
    replicated = {
        "metadata": {"name": "worker-1", "namespace": "pgplatform", "labels": labels},
        "spec": {"replicas": 3, "template": {"metadata": {"labels": labels}, "spec": {}}},
    }
    diagnostics = _analyze_stack(
        analyzer, "prod", [("kubernetes:apps/v1:Deployment", "worker", replicated)]
    )
    assert [d.policyName for d in diagnostics] == ["pdb-for-replicated-workloads"]


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_pack_passes_the_rendered_stack(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, rendered_stack: Callable[[str], Path], stack: str
) -> None:
    resources = deployed_view(rendered_stack(stack))
    messages = [
        f"{name}: [{d.policyName}] {d.message}"
        for resource_type, name, props in resources
        for d in _analyze(analyzer, stack, resource_type, name, dict(props))
    ]
    messages += [
        f"[{d.policyName}] {d.message}" for d in _analyze_stack(analyzer, stack, resources)
    ]
    assert messages == []


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_pack_checks_the_preview_render(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, rendered_preview: Callable[[str], Path], stack: str
) -> None:
    """On a first preview every policy runs on every resource: none is skipped as "can't run
    policy ... during preview" for an unknown value, and none is violated."""
    resources = [
        (resource_type, name, _engine_unknowns(row_props))
        for resource_type, name, row_props in _preview_rows(rendered_preview(stack))
    ]
    messages = [
        f"{name}: [{d.policyName}] {d.message}"
        for resource_type, name, props in resources
        for d in _analyze(analyzer, stack, resource_type, name, props)
    ]
    messages += [
        f"[{d.policyName}] {d.message}" for d in _analyze_stack(analyzer, stack, resources)
    ]
    assert messages == []
    assert any(name == "identity-api-deployment" for _, name, _ in resources)


def test_pack_skips_a_rule_on_an_unknown_spec(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    """The contrast: a Deployment whose whole spec is unknown is not checked at preview."""
    props = {"metadata": {"namespace": "pgplatform"}, "spec": UNKNOWN}
    messages = [d.message for d in _analyze(analyzer, "prod", DEPLOYMENT, "new-api", props)]
    assert any("can't run policy 'pod-hardened'" in m for m in messages), messages


def _preview_rows(build: Path) -> list[tuple[str, str, dict[str, Any]]]:
    return [(row["type"], row["name"], row["inputs"]) for row in resources_json(build)]


def _engine_unknowns(value: Any) -> Any:
    """The render's ``[unknown]`` as the engine sends an unknown value."""
    if value == RENDERED_UNKNOWN:
        return UNKNOWN
    if isinstance(value, dict):
        return {k: _engine_unknowns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_engine_unknowns(v) for v in value]
    return value
