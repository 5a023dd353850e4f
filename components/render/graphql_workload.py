"""Kubernetes objects of the GraphQL pilot (PostGraphile), as plain manifest specs.

The container command, arguments, environment and config files come from
:mod:`components.render.postgraphile`; this module places them into a hardened pod and adds
what runs around it: Service, HTTPRoute, autoscaler, disruption budget and network policy.

Decisions encoded here and why:

* The image is built from ``components/graphql/Dockerfile`` (PostGraphile installed from the
  pinned lockfile at build time, :mod:`components.render.graphql_image`): the pod installs
  nothing and reaches no package registry, so its network policy has no internet egress at all.
  The root file system is read-only; ``/tmp`` is a small ``emptyDir``.
* The metrics port (the rc file's plugin serves ``/metrics`` there) is open to Prometheus
  only, and exists only while the plugin serves it (``metrics_port``).
* No ``replicas`` on the Deployment: the HorizontalPodAutoscaler owns the count, and a replica
  number in the manifest would reset it on every deploy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from components.render import pods
from components.render import postgraphile as pgr
from components.render.domain_api import GatewayParent, disruption_budget, gateway_peer
from components.render.postgrest import JWT_RELOADER_IMAGE
from components.render.secret_sync import SECRETS_CHECKSUM_ANNOTATION, wait_for_secret_container

NAME: Final = "postgraphile"
COMPONENT: Final = "graphql"
INSTANCE: Final = "graphql"
SERVICE_NAME: Final = "graphql-api"
CONSUMER: Final = "graphql"
"""Vault consumer of the pilot: KV path, policy, role and the Secret ``graphql-secrets``."""
PASSWORD_KEY: Final = "password"  # noqa: S105 - a key name
"""Key of the ``postgraphile`` password in the consumer's secret (as for PostgREST)."""
JWT_SECRET_KEY: Final = "jwt_secret"  # noqa: S105 - a key name
"""Key of the stack's HS256 secret in the consumer's secret (as for PostgREST)."""
JWKS_SECRET: Final = "graphql-jwks"  # noqa: S105 - an object name
"""Secret the pilot's JWKS ExternalSecret writes (key ``jwks.json``), from ``auth.jwksUrl``."""
GATEWAY_API_VERSION: Final = "gateway.networking.k8s.io/v1"
PORT_NAME: Final = "http"
METRICS_PORT_NAME: Final = "metrics"
ROUTE_PREFIX: Final = "/graphql"
# Where the JWKS Secret is mounted (a directory, never subPath: rotated keys must arrive).
JWKS_DIR: Final = "/etc/postgraphile-jwt"
JWKS_KEY: Final = "jwks.json"
TMP_VOLUME_LIMIT: Final = "64Mi"
KUBE_DNS_NAMESPACE: Final = "kube-system"
KUBE_DNS_LABELS: Final = {"k8s-app": "kube-dns"}
NAMESPACE_LABEL: Final = "kubernetes.io/metadata.name"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_IMAGE = re.compile(r"^[a-z0-9./_-]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$")


def selector() -> dict[str, str]:
    """The labels the Deployment, Service, PDB and NetworkPolicy select the pods by."""
    return pods.selector_labels(NAME, INSTANCE)


def labels() -> dict[str, str]:
    """Labels of every object of the pilot (the contract: postgraphile / graphql / graphql)."""
    return pods.labels(NAME, COMPONENT, INSTANCE)


def route_path(domains: Sequence[str]) -> str:
    """``/graphql/identity``: one path per pilot, named after the domains it serves."""
    if not domains:
        raise ValueError("domains: at least one domain is served")
    return f"{ROUTE_PREFIX}/{'-'.join(domains)}"


def config_map_data(inp: pgr.PostgraphileInput) -> dict[str, str]:
    """ConfigMap payload: the rc file (never a secret; the npm tree is in the image)."""
    return pgr.config_files(inp)


@dataclass(frozen=True, kw_only=True)
class GraphqlWorkloadInput:
    """The pod and its autoscaling; ``postgraphile`` already names the Secrets it reads."""

    postgraphile: pgr.PostgraphileInput
    config_map: pods.Placed
    """ConfigMap holding :func:`config_map_data` (mounted at ``config_dir``);
    a generated name, so possibly a reference the engine fills in."""
    service_account: str
    secret_name: str
    """The consumer's Secret (password, HS256 secret); the pod waits until it is in sync."""
    jwks_secret: str | None = None
    """Secret with key ``jwks.json`` mounted at :data:`JWKS_DIR` (JWKS mode only)."""
    image: str
    """The pilot image built from ``components/graphql/Dockerfile`` (pinned tag or digest)."""
    wait_image: str = JWT_RELOADER_IMAGE
    resources: pods.Resources
    min_replicas: int
    max_replicas: int
    cpu_target: int = 70
    config_checksum: str
    """:func:`components.render.checksum.content_checksum` of the ConfigMap: new files roll."""
    secrets_checksum: pods.Placed
    """The consumer's keyed checksum of its secret values: a rotated value rolls the pods
    (a reference to the value, unknown at preview while a secret value is)."""

    def __post_init__(self) -> None:
        self._check_secrets()
        for name in ("config_map", "service_account", "secret_name", "jwks_secret"):
            value = getattr(self, name)
            # A value that is not a str is a reference the engine resolves (placed, not read).
            if isinstance(value, str) and not _HOSTNAME.match(value):
                raise ValueError(f"{name}: {value!r} is not a Kubernetes object name")
        for name in ("image", "wait_image"):
            image = getattr(self, name)
            if not _IMAGE.match(image) or ":" not in image.rsplit("/", 1)[-1]:
                raise ValueError(f"{name}: {image!r} must be pinned by tag or digest")
            if image.endswith(":latest"):
                raise ValueError(f"{name}: 'latest' is not a pinned version")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"min_replicas/max_replicas: need 1 <= min <= max, got "
                f"{self.min_replicas}..{self.max_replicas}"
            )
        if not 10 <= self.cpu_target <= 95:
            raise ValueError(f"cpu_target: {self.cpu_target} is not within 10..95")
        for name in ("config_checksum", "secrets_checksum"):
            value = getattr(self, name)
            if isinstance(value, str) and not re.fullmatch(r"[0-9a-f]{64}", value):
                raise ValueError(f"{name}: must be a sha256 hex digest")

    def _check_secrets(self) -> None:
        inp = self.postgraphile
        if (inp.jwks_file is None) != (self.jwks_secret is None):
            raise ValueError("jwks_secret: needed exactly when postgraphile.jwks_file is set")
        if inp.jwks_file is not None and inp.jwks_file != f"{JWKS_DIR}/{JWKS_KEY}":
            raise ValueError(f"postgraphile.jwks_file: must be {JWKS_DIR}/{JWKS_KEY}")
        if inp.db_sslrootcert is not None:
            raise ValueError("postgraphile.db_sslrootcert: no CA volume is mounted by this pod")
        refs = [inp.db_password, *([inp.jwt_secret] if inp.jwt_secret else [])]
        if any(ref.name != self.secret_name for ref in refs):
            raise ValueError(
                f"secret_name: the container reads {sorted({r.name for r in refs})}, "
                f"not only {self.secret_name!r}"
            )


def _server_container(w: GraphqlWorkloadInput) -> dict[str, Any]:
    inp = w.postgraphile
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": inp.config_dir, "readOnly": True},
        {"name": "tmp", "mountPath": pgr.SCRATCH_DIR},
    ]
    if w.jwks_secret is not None:
        mounts.append({"name": "jwks", "mountPath": JWKS_DIR, "readOnly": True})
    return {
        "name": NAME,
        "image": w.image,
        "imagePullPolicy": "IfNotPresent",
        "command": pgr.container_command(inp),
        "args": pgr.container_args(inp),
        "env": pgr.container_env(inp),
        "workingDir": inp.config_dir,
        "ports": [
            {"name": PORT_NAME, "containerPort": inp.port, "protocol": "TCP"},
            *(
                [{"name": METRICS_PORT_NAME, "containerPort": inp.metrics_port, "protocol": "TCP"}]
                if inp.metrics_port is not None
                else []
            ),
        ],
        # PostGraphile 4 has no health endpoint (GET on the GraphQL route answers 405).
        "startupProbe": pods.tcp_probe(PORT_NAME, period=2, failures=30),
        "livenessProbe": pods.tcp_probe(PORT_NAME),
        "readinessProbe": pods.tcp_probe(PORT_NAME, period=5),
        "resources": w.resources.to_k8s(),
        "securityContext": pods.container_security_context(pgr.NODE_UID),
        "volumeMounts": mounts,
    }


def deployment_spec(w: GraphqlWorkloadInput) -> dict[str, Any]:
    """The Deployment ``spec``: secret sync wait, then the server; rolled on any change."""
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_VOLUME_LIMIT}},
        {"name": "config", "configMap": {"name": w.config_map, "defaultMode": 0o444}},
    ]
    if w.jwks_secret is not None:
        volumes.append(
            {
                "name": "jwks",
                "secret": {
                    "secretName": w.jwks_secret,
                    "items": [{"key": JWKS_KEY, "path": JWKS_KEY}],
                    "defaultMode": 0o444,
                },
            }
        )
    return {
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": selector()},
        "strategy": pods.rolling_update(),
        "template": {
            "metadata": {
                "labels": labels(),
                "annotations": {
                    pods.CHECKSUM_ANNOTATION: w.config_checksum,
                    SECRETS_CHECKSUM_ANNOTATION: w.secrets_checksum,
                },
            },
            "spec": pods.hardened_pod_spec(
                containers=[_server_container(w)],
                init_containers=[
                    # PGPASSWORD is read once at start: never start with a stale Secret.
                    wait_for_secret_container(
                        w.secret_name,
                        image=w.wait_image,
                        security_context=pods.container_security_context(pgr.NODE_UID),
                    ),
                ],
                selector=selector(),
                service_account=w.service_account,
                volumes=volumes,
                uid=pgr.NODE_UID,
            ),
        },
    }


def service_spec(port: int, metrics_port: int | None = None) -> dict[str, Any]:
    """ClusterIP Service ``graphql-api`` on the server port (the gateway's backend) and the
    metrics port (what the ServiceMonitor scrapes)."""
    ports = [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}]
    if metrics_port is not None:
        ports.append(
            {
                "name": METRICS_PORT_NAME,
                "port": metrics_port,
                "targetPort": METRICS_PORT_NAME,
                "protocol": "TCP",
            }
        )
    return {"type": "ClusterIP", "selector": selector(), "ports": ports}


def hpa_spec(
    *, min_replicas: int, max_replicas: int, deployment: str, cpu_target: int = 70
) -> dict[str, Any]:
    """CPU-based autoscaling between the configured replica bounds."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu_target},
                },
            }
        ],
    }


def pdb_spec(min_replicas: int) -> dict[str, Any]:
    """The REST APIs' budget: ``minAvailable: 1`` from two replicas, else ``maxUnavailable: 1``."""
    return {
        "selector": {"matchLabels": selector()},
        **disruption_budget(min_replicas),
        # A crash-looping pod must not block node drains.
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


@dataclass(frozen=True, kw_only=True)
class RouteInput:
    """Where the gateway publishes the pilot: the REST APIs' parentRef and forward-auth filter."""

    gateway: GatewayParent
    public_host: str
    paths: tuple[str, ...]
    service_port: int

    def __post_init__(self) -> None:
        if not _HOSTNAME.match(self.public_host):
            raise ValueError(f"public_host: {self.public_host!r} is not a DNS name")
        if not self.paths or any(not p.startswith("/") for p in self.paths):
            raise ValueError(f"paths: {self.paths!r} must be absolute paths")


def http_route_spec(r: RouteInput) -> dict[str, Any]:
    """HTTPRoute: exact paths only (the GraphQL route, GraphiQL where enabled), no rewrite."""
    parent: dict[str, Any] = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": r.gateway.name,
        "namespace": r.gateway.namespace,
    }
    if r.gateway.section_name:
        parent["sectionName"] = r.gateway.section_name
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "Exact", "value": path}} for path in r.paths],
        "backendRefs": [
            {"group": "", "kind": "Service", "name": SERVICE_NAME, "port": r.service_port}
        ],
    }
    auth = r.gateway.forward_auth
    if auth is not None:
        rule["filters"] = [
            {
                "type": "ExtensionRef",
                "extensionRef": {"group": auth.group, "kind": auth.kind, "name": auth.name},
            }
        ]
    return {"parentRefs": [parent], "hostnames": [r.public_host], "rules": [rule]}


def service_account_spec() -> dict[str, Any]:
    """The pods never call the Kubernetes API; the account exists for the Vault role binding."""
    return {"automountServiceAccountToken": False}


@dataclass(frozen=True, kw_only=True)
class NetworkInput:
    """Who may talk to the pods and whom they may reach."""

    gateway: GatewayParent
    """Whose proxies may call the pilot (the REST APIs' gateway and proxy namespace)."""
    server_port: int
    pgbouncer_selector: Mapping[str, str]
    pgbouncer_port: int
    metrics_port: int | None = None
    prometheus_namespace: str = "monitoring"
    """Who scrapes ``metrics_port``."""
    dns_namespace: str = KUBE_DNS_NAMESPACE
    dns_selector: Mapping[str, str] = field(default_factory=lambda: dict(KUBE_DNS_LABELS))

    def __post_init__(self) -> None:
        if not self.pgbouncer_selector:
            raise ValueError("pgbouncer_selector: must select the PgBouncer pods")


def network_policy_spec(n: NetworkInput) -> dict[str, Any]:
    """Ingress from the gateway's proxies (and Prometheus on the metrics port); egress to
    PgBouncer and DNS, nothing else."""
    dns_ports = [{"protocol": proto, "port": 53} for proto in ("UDP", "TCP")]
    ingress: list[dict[str, Any]] = [
        {
            "from": [gateway_peer(n.gateway)],
            "ports": [{"protocol": "TCP", "port": n.server_port}],
        }
    ]
    if n.metrics_port is not None:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {NAMESPACE_LABEL: n.prometheus_namespace}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": n.metrics_port}],
            }
        )
    return {
        "podSelector": {"matchLabels": selector()},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": ingress,
        "egress": [
            {
                "to": [{"podSelector": {"matchLabels": dict(n.pgbouncer_selector)}}],
                "ports": [{"protocol": "TCP", "port": n.pgbouncer_port}],
            },
            {
                "to": [
                    {
                        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: n.dns_namespace}},
                        "podSelector": {"matchLabels": dict(n.dns_selector)},
                    }
                ],
                "ports": dns_ports,
            },
        ],
    }


def secret_name() -> str:
    """``graphql-secrets``: the Secret VaultSecrets produces for :data:`CONSUMER`."""
    return f"{CONSUMER}-secrets"
