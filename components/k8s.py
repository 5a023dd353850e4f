"""Kubernetes objects from plain manifests.

Every object is registered under the type token the typed pulumi-kubernetes classes use
(``kubernetes:<group>/<version>:<Kind>``, ``core/v1`` for the core group) and with the provider
plugin version the installed SDK pins, so the engine and the provider treat it exactly like
``k8s.apps.v1.Deployment(...)`` would. We register plain dicts instead of the typed classes:

- the pure builders in ``components/render`` already produce manifest dicts, which are validated
  against the Kubernetes OpenAPI and CRD schemas in the tests (stricter than the typed args);
- importing the typed classes costs about a second per run (``pulumi_kubernetes.core.v1`` alone
  evaluates thousands of annotated classes), which the offline render and every test would pay.

Why not the SDK's public generic class ``pulumi_kubernetes.apiextensions.CustomResource``: it
builds its type token as ``kubernetes:<apiVersion>:<Kind>``, which for the core group is
``kubernetes:v1:ConfigMap`` rather than the provider's ``kubernetes:core/v1:ConfigMap`` (a
different resource type to the engine: every Service, ConfigMap and ServiceAccount would be
replaced), and it registers only ``metadata`` and ``spec``, so a ConfigMap's ``data``, a
ServiceAccount's ``automountServiceAccountToken`` or a Role's ``rules`` cannot be expressed
(``tests/unit/test_k8s.py`` pins both facts). The plugin version comes from the
``pulumi-plugin.json`` the SDK package ships, the file the engine itself reads, without
importing the SDK's private helpers (or the SDK at all).

Moving apiVersions (HPA ``autoscaling/v2``, PDB ``policy/v1``, Gateway API, External Secrets):
the type token carries the version, so a new version is a new type and the engine would replace
the object (delete + create). Pass the old token as an alias, ``KubeObject(...,
previous_api_versions=("external-secrets.io/v1beta1",))``: the engine then matches the existing
state to the new registration and the provider updates the object in place (it is one object to
the API server, served under both versions).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi


def type_token(api_version: str, kind: str) -> str:
    """``apps/v1`` + ``Deployment`` → ``kubernetes:apps/v1:Deployment`` (core is ``core/v1``)."""
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{kind}"


@functools.cache
def provider_version() -> str:
    """Version of the kubernetes provider plugin the installed SDK was generated for."""
    spec = importlib.util.find_spec("pulumi_kubernetes")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pulumi-kubernetes is not installed (requirements.txt)")
    plugin = Path(next(iter(spec.submodule_search_locations))) / "pulumi-plugin.json"
    return str(json.loads(plugin.read_text())["version"])


class KubeObject(pulumi.CustomResource):
    """One Kubernetes object; ``secret_fields`` (e.g. ``stringData``) stay encrypted in state.

    The manifest's leaves may be ``pulumi.Input`` values (a generated name, a checksum of a
    secret): only those leaves are unknown on a preview, never the whole object.
    """

    if TYPE_CHECKING:
        # Declared for the type checker only: an annotation the SDK can see makes it evaluate
        # the class's type hints again on every registration (a tenth of a large render).
        metadata: pulumi.Output[dict[str, Any]]
        """The object's metadata as the API server returns it (with the generated name)."""

    def __init__(
        self,
        name: str,
        *,
        api_version: str,
        kind: str,
        metadata: Mapping[str, Any],
        body: Mapping[str, Any] | None = None,
        secret_fields: Sequence[str] = (),
        previous_api_versions: Sequence[str] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": metadata,
            **(body or {}),
        }
        for field in secret_fields:
            props[field] = pulumi.Output.secret(props[field])
        own = pulumi.ResourceOptions(
            version=provider_version(),
            additional_secret_outputs=list(secret_fields),
            aliases=[pulumi.Alias(type_=type_token(v, kind)) for v in previous_api_versions],
        )
        super().__init__(
            type_token(api_version, kind), name, props, pulumi.ResourceOptions.merge(own, opts)
        )
        fixed = metadata.get("name")
        self._fixed_name = fixed if isinstance(fixed, str) else None

    @property
    def object_name(self) -> pulumi.Output[str]:
        """``metadata.name``: the fixed one (known at preview), else the one Pulumi generates.

        Either way the Output depends on this object, so whatever uses the name waits for it.
        """
        fixed = self._fixed_name
        if fixed is not None:
            return self.urn.apply(lambda _: fixed)
        return self.metadata.apply(lambda m: str(m["name"]))


def meta(
    namespace: str,
    labels: Mapping[str, str],
    *,
    name: str | None = None,
    annotations: Mapping[str, pulumi.Input[str]] | None = None,
) -> dict[str, Any]:
    """Object metadata; ``name`` where operators, runbooks or other objects rely on it."""
    out: dict[str, Any] = {"namespace": namespace, "labels": dict(labels)}
    if name is not None:
        out["name"] = name
    if annotations:
        out["annotations"] = dict(annotations)
    return out
