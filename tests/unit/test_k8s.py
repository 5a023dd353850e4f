"""Plain-manifest Kubernetes objects: the type token, the plugin version, aliases."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import pulumi
import pytest

from components.k8s import KubeObject, provider_version, type_token
from tools.mocks import RecordingMocks, settle

pytestmark = pytest.mark.unit

HPA = "HorizontalPodAutoscaler"


def _register(
    pulumi_mocks: Callable[..., RecordingMocks], api_version: str, previous: tuple[str, ...] = ()
) -> RecordingMocks:
    mocks = pulumi_mocks("prod", {})
    parent = pulumi.ComponentResource("pgplatform:index:DomainApi", "identity-api")
    KubeObject(
        "identity-api-hpa",
        api_version=api_version,
        kind=HPA,
        metadata={"namespace": "pgplatform", "name": "identity-api"},
        body={"spec": {"minReplicas": 2, "maxReplicas": 8}},
        previous_api_versions=previous,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    settle()
    return mocks


def test_type_token_is_the_typed_classes_one() -> None:
    assert type_token("v1", "ConfigMap") == "kubernetes:core/v1:ConfigMap"
    assert type_token("autoscaling/v2", HPA) == f"kubernetes:autoscaling/v2:{HPA}"


def test_plugin_version_is_the_installed_sdks() -> None:
    assert provider_version() == importlib.metadata.version("pulumi_kubernetes")


def test_a_moved_api_version_keeps_the_object_through_an_alias(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    """Deployed as autoscaling/v2beta2, then moved to v2: the new registration names the old
    URN as its alias, so the engine carries the state over and updates instead of replacing."""
    [old] = _register(pulumi_mocks, "autoscaling/v2beta2").by_type(
        f"kubernetes:autoscaling/v2beta2:{HPA}"
    )
    [new] = _register(pulumi_mocks, "autoscaling/v2", ("autoscaling/v2beta2",)).by_type(
        f"kubernetes:autoscaling/v2:{HPA}"
    )
    assert new.urn != old.urn
    assert new.aliases == (old.urn,)
    assert new.inputs["apiVersion"] == "autoscaling/v2"


def test_public_generic_class_cannot_stand_in(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    """Why KubeObject is not ``apiextensions.CustomResource`` (components/k8s.py): the core
    group gets another type token, and only ``metadata``/``spec`` are registered."""
    from pulumi_kubernetes.apiextensions import CustomResource

    mocks = pulumi_mocks("prod", {})
    CustomResource("cm", api_version="v1", kind="ConfigMap", metadata={"name": "x"})
    settle()
    [recorded] = [r for r in mocks.resources if r.name == "cm"]
    assert recorded.type == "kubernetes:v1:ConfigMap" != type_token("v1", "ConfigMap")
    with pytest.raises(TypeError):
        CustomResource("cm2", api_version="v1", kind="ConfigMap", data={"a": "b"})  # type: ignore[call-arg]
