"""Kubernetes object fragments every workload of the platform shares.

One place for labels and pod hardening (DESIGN.md §4) so that a fix to, say, the security context
reaches PostgREST, PgBouncer, PostGraphile and the jobs at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
