"""GitOps option: Kubernetes objects go to a render-to-directory provider, nothing else does."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import run_program, stack_config
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit


def test_gitops_mode_routes_every_kubernetes_object_to_the_render_provider(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    config, secrets = stack_config("prod")
    config["pgplatform:gitops"] = json.dumps({"renderDirectory": "rendered/prod"})
    mocks = run_program(pulumi_mocks, "prod", config, secrets)
    (provider,) = mocks.by_type("pulumi:providers:kubernetes")
    assert provider.inputs["renderYamlToDirectory"] == "rendered/prod"
    kubernetes = list(mocks.kubernetes())
    assert kubernetes
    assert all("pulumi:providers:kubernetes::gitops" in r.provider for r in kubernetes)
    # Database roles and Vault are still applied by their own providers.
    others = [r for r in mocks.resources if r.type.startswith(("postgresql:", "vault:"))]
    assert others
    assert not any("kubernetes::gitops" in r.provider for r in others)
    # Rendered YAML is plain text on disk: no Secret with a literal value may be among it.
    assert not mocks.by_type("kubernetes:core/v1:Secret")


def test_default_mode_uses_the_default_provider(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    assert not mocks.by_type("pulumi:providers:kubernetes")
    assert all("gitops" not in r.provider for r in mocks.kubernetes())
