"""Kubernetes object fragments every workload of the platform shares.

One place for labels and pod hardening (DESIGN.md §4) so that a fix to, say, the security context
reaches PostgREST, PgBouncer, PostGraphile and the jobs at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

Placed: TypeAlias = object
"""A leaf a builder places into a manifest but never reads: a plain value in the tests and
builders, or, from a component, a ``pulumi.Input`` the engine may only know once it has created
another object (a generated name, a checksum of a secret). Keeping such values single leaves is
what lets a preview show, and the policy pack check, everything else of the object."""

PART_OF = "pgplatform"
MANAGED_BY = "pulumi"
CHECKSUM_ANNOTATION = "pgplatform.io/config-checksum"

# Non-root uid/gid used when an image does not pin one itself (65532 = distroless "nonroot").
DEFAULT_UID = 65532


def labels(name: str, component: str, instance: str) -> dict[str, str]:
    """Recommended app.kubernetes.io labels; ``selector_labels`` is the immutable subset."""
    return {
        **selector_labels(name, instance),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_labels(name: str, instance: str) -> dict[str, str]:
    """Labels a Deployment selects on: never change them after the first deploy."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}


_LABEL_PREFIX = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_LABEL_NAME = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?=.{0,63}$)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def label_problem(key: str, value: str) -> str | None:
    """Why ``key: value`` is not a valid Kubernetes label, or None (API server rules)."""
    if not isinstance(key, str) or not isinstance(value, str):
        return f"label {key!r}: key and value must be strings"
    prefix, _, name = key.rpartition("/")
    if (prefix and not _LABEL_PREFIX.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(name):
        return (
            f"label key {key!r} is invalid: [prefix/]name, name <= 63 characters of "
            "[A-Za-z0-9-_.] starting and ending alphanumeric, prefix a DNS subdomain"
        )
    if not _LABEL_VALUE.fullmatch(value):
        return (
            f"label {key!r} value {value!r} is invalid: <= 63 characters of [A-Za-z0-9-_.] "
            "starting and ending alphanumeric (or empty)"
        )
    return None


def with_extra_labels(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus user labels (e.g. ``release: <name>`` a Prometheus selects objects by).

    The platform's own ``app.kubernetes.io/*`` labels stay ours: an extra label may add to them,
    never replace one, since selectors and dashboards rely on them.
    """
    for key, value in extra.items():
        problem = label_problem(key, value)
        if problem:
            raise ValueError(problem)
        if (key in base and base[key] != value) or key.startswith("app.kubernetes.io/"):
            raise ValueError(f"label {key!r} is set by the platform and cannot be overridden")
    return {**base, **extra}


@dataclass(frozen=True, kw_only=True)
class Resources:
    """Container requests and limits, Kubernetes quantity strings."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    def to_k8s(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


def container_security_context(uid: int = DEFAULT_UID) -> dict[str, Any]:
    """Non-root, read-only root filesystem, no capabilities, no privilege escalation."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(uid: int = DEFAULT_UID) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(
    path: str, port: int | str, *, period: int = 10, failures: int = 3
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def tcp_probe(port: int | str, *, period: int = 10, failures: int = 3) -> dict[str, Any]:
    return {
        "tcpSocket": {"port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def secret_env(name: str, secret_name: str, key: str) -> dict[str, Any]:
    """An env var that reads a Secret at pod start: the value never enters the pod spec."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def topology_spread(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    """Spread replicas across nodes (hard) and zones (best effort)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": dict(selector)},
        },
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
        },
    ]


def hardened_pod_spec(
    *,
    containers: Sequence[Mapping[str, Any]],
    selector: Mapping[str, str],
    service_account: str | None = None,
    volumes: Sequence[Mapping[str, Any]] = (),
    init_containers: Sequence[Mapping[str, Any]] = (),
    automount_token: bool = False,
    uid: int = DEFAULT_UID,
    share_process_namespace: bool = False,
) -> dict[str, Any]:
    """A pod spec with the platform's hardening; tokens stay unmounted unless asked for.

    ``share_process_namespace`` lets a sidecar signal the main process (e.g. PostgREST's
    ``SIGUSR2`` reload); containers then see each other's processes, so only enable it for
    sidecars running fixed scripts from pinned images under the same UID.
    """
    spec: dict[str, Any] = {
        "automountServiceAccountToken": automount_token,
        "securityContext": pod_security_context(uid),
        "containers": [dict(c) for c in containers],
        "topologySpreadConstraints": topology_spread(selector),
        "enableServiceLinks": False,
    }
    if share_process_namespace:
        spec["shareProcessNamespace"] = True
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    if init_containers:
        spec["initContainers"] = [dict(c) for c in init_containers]
    if volumes:
        spec["volumes"] = [dict(v) for v in volumes]
    return spec


def rolling_update() -> dict[str, Any]:
    """Never drop below the desired replica count while rolling."""
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
