"""The offline render as the policy pack sees a stack: what the unit and pack tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policy import rules
from tests.conftest import resources_json
from tools.mocks import UNKNOWN, auto_suffix


def deployed_view(build: Path) -> list[rules.StackResource]:
    """The render's registrations as the engine would show them: generated names filled in.

    Kubernetes objects without ``metadata.name`` get the engine's auto-name, which is also what
    other objects reference (an HPA's ``scaleTargetRef.name``).
    """
    resources: list[rules.StackResource] = []
    for row in resources_json(build):
        props = dict(row["inputs"])
        if row["type"].startswith("kubernetes:"):
            metadata = dict(props.get("metadata") or {})
            metadata.setdefault("name", f"{row['name']}-{auto_suffix(row['name'])}")
            props["metadata"] = metadata
        resources.append((row["type"], row["name"], props))
    return resources


def urn(stack: str, resource_type: str, name: str) -> str:
    """A resource URN as the engine builds it (the pack reads the stack name from it)."""
    return f"urn:pulumi:{stack}::pgplatform::{resource_type}::{name}"


def preview_view(build: Path) -> list[rules.StackResource]:
    """A preview-mode render as the engine hands it to the pack on ``pulumi preview``.

    Unknown values travel as the engine's unknown marker, and the policy SDK wraps the props in
    its proxy that raises ``UnknownValueError`` when a rule reads one: the pack then skips that
    rule for the resource ("can't run policy ... during preview") instead of checking it.
    """
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

    def engine(value: Any) -> Any:
        if value == UNKNOWN:
            return UNKNOWN_STRING_VALUE
        if isinstance(value, dict):
            return {k: engine(v) for k, v in value.items()}
        if isinstance(value, list):
            return [engine(v) for v in value]
        return value

    return [
        (row["type"], row["name"], unknown_checking_proxy(engine(row["inputs"])))
        for row in resources_json(build)
    ]
