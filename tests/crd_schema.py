"""Strict validation of custom resources against the CRDs' own OpenAPI v3 schemas.

The API server prunes fields a structural schema does not list, so a misspelt field is silently
dropped in a cluster. To catch it offline, the loader adds ``additionalProperties: false`` to
every schema node that lists ``properties`` and neither preserves unknown fields nor sets
``additionalProperties`` itself, and it checks ``metadata`` against a strict ObjectMeta subset
(the CRD schemas only say ``type: object`` there).

Draft 4 semantics are used on purpose: ``2.0`` is not an integer there, exactly as the API server
rejects a float for an ``int32`` field. Not checked: CEL rules (``x-kubernetes-validations``) and
``format`` keywords.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR_ENV = "PGPLATFORM_CRD_DIR"
"""Environment variable overriding where the CRD YAML files are read from."""

_REPO_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_CRD_DIRS = (_REPO_ROOT / "crds", _REPO_ROOT.parent / "shared" / "crds")

_DNS_SUBDOMAIN = r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _DNS_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "labels": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "maxLength": 63,
                "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
            },
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
    },
}
_COMBINATORS = ("allOf", "anyOf", "oneOf")
# libyaml parses the multi-megabyte CRDs about ten times faster than the pure-Python loader.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CrdValidationError(ValueError):
    """A custom resource does not match its CRD schema; ``errors`` lists ``path: message``."""

    def __init__(self, subject: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{subject} is invalid:\n  " + "\n  ".join(errors))


def crd_dir() -> Path:
    """Return the directory holding the CRD YAML files."""
    override = os.environ.get(CRD_DIR_ENV)
    candidates = (Path(override),) if override else _DEFAULT_CRD_DIRS
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no CRD directory found (tried {tried}); set {CRD_DIR_ENV}")


@functools.cache
def _crds_in(path: Path) -> tuple[dict[str, Any], ...]:
    docs = yaml.load_all(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    return tuple(
        doc
        for doc in docs
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    )


def _find_crd(directory: Path, group: str, kind: str) -> dict[str, Any]:
    """Find the CRD, trying the upstream file naming ``<group>_<plural>.yaml`` first."""
    named = sorted(directory.glob(f"{group}_*.y*ml"))
    others = sorted(p for p in directory.glob("*.y*ml") if p not in named)
    for path in (*named, *others):
        for crd in _crds_in(path):
            if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
                return crd
    raise LookupError(f"no CRD for kind {kind!r} in group {group!r} under {directory}")


def _tighten(node: Any, *, strict: bool) -> None:
    """Apply OpenAPI ``nullable`` and, outside combinators, forbid unlisted properties."""
    if not isinstance(node, dict):
        return
    if node.get("nullable") is True and "type" in node:
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    if (
        strict
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for child in node.get("properties", {}).values():
        _tighten(child, strict=strict)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _tighten(node[key], strict=strict)
    # A combinator branch only adds constraints; making it closed would reject valid objects.
    for key in _COMBINATORS:
        for branch in node.get(key, []):
            _tighten(branch, strict=False)
    if isinstance(node.get("not"), dict):
        _tighten(node["not"], strict=False)


def strict_crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    """Return the tightened ``openAPIV3Schema`` of ``kind.group`` at ``version``."""
    crd = _find_crd(crd_dir(), group, kind)
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    entry = versions.get(version)
    if entry is None:
        raise LookupError(f"{kind}.{group} has no version {version!r} (has {sorted(versions)})")
    if not entry.get("served", False):
        raise LookupError(f"{kind}.{group} version {version!r} is not served")
    schema: dict[str, Any] = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
    _tighten(schema, strict=True)
    props = schema.setdefault("properties", {})
    if "properties" not in props.get("metadata", {}):
        props["metadata"] = copy.deepcopy(_OBJECT_META)
    schema.setdefault("required", [])
    for key in ("apiVersion", "kind", "metadata"):
        if key not in schema["required"]:
            schema["required"].append(key)
    return schema


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


@functools.cache
def load_crd_validator(group: str, kind: str, version: str) -> Callable[[Mapping[str, Any]], None]:
    """Return a function that raises :class:`CrdValidationError` for an invalid ``kind`` object.

    The object is a whole custom resource (``apiVersion``, ``kind``, ``metadata``, ``spec``).
    Every error is reported with its path, e.g. ``spec.data[0].remoteRef.kye``.
    """
    schema = strict_crd_schema(group, kind, version)
    validator = jsonschema.Draft4Validator(schema)
    api_version = f"{group}/{version}"

    def validate(obj: Mapping[str, Any]) -> None:
        subject = f"{kind} ({api_version})"
        if not isinstance(obj, Mapping):
            raise CrdValidationError(subject, [f"<root>: expected a mapping, got {type(obj)}"])
        errors = []
        if obj.get("apiVersion") != api_version:
            errors.append(f"apiVersion: expected {api_version!r}, got {obj.get('apiVersion')!r}")
        if obj.get("kind") != kind:
            errors.append(f"kind: expected {kind!r}, got {obj.get('kind')!r}")
        found = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(map(str, e.path)))
        errors += [f"{_path(e.path)}: {e.message}" for e in found]
        if errors:
            name = (
                obj.get("metadata", {}).get("name")
                if isinstance(obj.get("metadata"), dict)
                else None
            )
            raise CrdValidationError(f"{subject} {name!r}" if name else subject, errors)

    return validate
