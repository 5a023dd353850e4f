"""Every manifest the offline render writes, validated strictly against its schema.

Custom resources go through the served CRD versions in the shared CRD directory
(``tests/crd_schema.py``: unknown fields rejected); built-in kinds through kubernetes-validate's
strict OpenAPI schemas of a current Kubernetes release. A kind with neither schema fails: a new
kind must bring its CRD, it is never skipped. The test walks ``build/<stack>/manifests/`` as a
whole, so objects added by any component are covered without touching this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import STACKS
from tests.crd_schema import CrdValidationError, load_crd_validator
from tests.tooling import in_ci
from tools.render import REDACTED

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "1.37"
"""Newest release kubernetes-validate 1.37 ships schemas for."""


def _kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate
    except ImportError:
        message = "kubernetes_validate not importable: pip install kubernetes-validate==1.37.0"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return kubernetes_validate


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _with_redactions_shaped(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret whose whole ``data``/``stringData`` the render redacted gets a one-key map.

    The render writes a secret-marked field as the string ``[secret]``; for a Secret payload the
    only valid shape is a string map, so that is what is validated (the keys stay unknown).
    """
    out = dict(manifest)
    if out.get("apiVersion") == "v1" and out.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if out.get(field) == REDACTED:
                out[field] = {"redacted": REDACTED}
    return out


def validation_errors(manifest: Mapping[str, Any], kv: ModuleType) -> list[str]:
    """Problems of one manifest; an empty list means it is valid. Unknown kinds are problems."""
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["no apiVersion/kind"]
    group, version = _split(api_version)
    crd_problem = "built-in group"
    if group and "." in group:
        try:
            validate = load_crd_validator(group, kind, version)
        except LookupError as error:
            crd_problem = str(error)
        else:
            try:
                validate(manifest)
            except CrdValidationError as error:
                return error.errors
            return []
    try:
        kv.validate(_with_redactions_shaped(manifest), KUBERNETES_VERSION, strict=True)
    except kv.SchemaNotFoundError as error:
        return [f"no schema for {kind} ({api_version}): {error.message}; CRD: {crd_problem}"]
    except kv.ValidationError as error:
        where = ".".join(str(p) for p in error.path) or "<root>"
        return [f"{where}: {error.message}"]
    return []


def _documents(build: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((build / "manifests").glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path.name, document


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_manifest_is_valid(
    rendered_stack: Callable[[str], Path], stack: str
) -> None:
    kv = _kubernetes_validate()
    build = rendered_stack(stack)
    documents = list(_documents(build))
    assert documents, f"no manifests under {build / 'manifests'}"
    problems = [
        f"{name}: {problem}"
        for name, document in documents
        for problem in validation_errors(document, kv)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stack", STACKS)
def test_every_kubernetes_resource_has_a_manifest(
    rendered_stack: Callable[[str], Path], stack: str
) -> None:
    """The directory is complete: one manifest per registered Kubernetes object."""
    build = rendered_stack(stack)
    registered = [
        row
        for row in json.loads((build / "resources.json").read_text())
        if row["type"].startswith("kubernetes:")
    ]
    kinds = sorted(row["type"].rsplit(":", 1)[1] for row in registered)
    written = sorted(document["kind"] for _, document in _documents(build))
    assert written == kinds


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "pgplatform"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "x", "image": "busybox:1.37.0"}]},
            },
        },
    }


def _route() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "x", "namespace": "pgplatform"},
        "spec": {"rules": [{"backendRefs": [{"name": "svc", "port": 3000}]}]},
    }


def test_validation_rejects_what_a_cluster_would_drop_or_refuse() -> None:
    """The checks above can fail: misspelt fields, wrong types and unknown kinds are caught."""
    kv = _kubernetes_validate()
    assert validation_errors(_deployment(), kv) == []
    assert validation_errors(_route(), kv) == []

    typo = _deployment()
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert validation_errors(typo, kv)
    floaty = _deployment()
    floaty["spec"]["replicas"] = "2"
    assert validation_errors(floaty, kv)
    route_typo = _route()
    route_typo["spec"]["rules"][0]["backendRefs"][0]["prot"] = 3000
    assert any("prot" in p for p in validation_errors(route_typo, kv))

    unknown_crd = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("no schema for Widget" in p for p in validation_errors(unknown_crd, kv))
    unknown_core = {"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert any("no schema for Gadget" in p for p in validation_errors(unknown_core, kv))

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": REDACTED,
    }
    assert validation_errors(secret, kv) == []
    assert validation_errors({**secret, "stringData": 5}, kv)
