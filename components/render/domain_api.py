"""Kubernetes manifests of one domain API: PostgREST behind the gateway, exposing one schema.

Plain dicts from plain inputs, so every invariant (hardening, probes, disruption budget,
network reach, routing) is tested without Pulumi. Decisions encoded here:

* The Deployment has no ``replicas``: the HorizontalPodAutoscaler owns the count. A manifest
  that sets it would scale the API back to that number on every deploy (Kubernetes docs,
  "Migrating Deployments and StatefulSets to horizontal autoscaling").
* The disruption budget follows the autoscaler's floor: ``minAvailable: 1`` when at least two
  replicas always run; with a floor of one, ``maxUnavailable: 1`` so a node drain is never
  blocked forever (the single replica is then the documented risk of that setting).
* Probes use the admin port (``/live``, ``/ready``), which the gateway never routes to.
* The JWT key Secret is mounted as a directory (never ``subPath``) so a rotated key reaches
  the running pod, where the reload sidecar makes PostgREST re-read it (docs/jwt-keys.md).
* A second sidecar polls the schema version through PgBouncer and makes PostgREST reload its
  schema cache (``SIGUSR1``), since ``NOTIFY pgrst`` cannot pass transaction pooling. It uses the
  PostgreSQL image the baseline Job uses (``psql``; no other tool is needed).
* An API serving the CDC copies (``DirectDatabase``) reaches the database's read replicas
  itself instead of PgBouncer: no pool can authenticate there, since PgBouncer's lookup
  function needs a superuser in every database it serves (docs/database.md). Its pods then
  reach the database pods instead of the pooler and mount the server's CA when verifying.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from components.render import pods
from components.render.checksum import content_checksum
from components.render.pgbouncer_pool import DatabaseEgress
from components.render.postgres_cluster import POSTGRES_IMAGE
from components.render.postgrest import (
    DB_URI_ENV,
    HS256_SECRET_FILE,
    JWKS_FILE,
    JWT_KEY_DIR,
    JWT_RELOADER_IMAGE,
    PGPASSWORD_ENV,
    POSTGREST_IMAGE,
    SCHEMA_POLL_ENV,
    SCHEMA_POLL_SECONDS,
    PostgrestConfInput,
    db_uri,
    jwt_key_reload_script,
    schema_reload_script,
)
from components.render.secret_sync import (
    SECRETS_CHECKSUM_ANNOTATION,
    wait_for_secret_container,
)
from components.render.secrets import JWKS_FILE_KEY

HTTP_PORT: Final = 3000
ADMIN_PORT: Final = 3001
CONF_DIR: Final = "/etc/postgrest/conf"
CONF_KEY: Final = "postgrest.conf"
CONF_FILE: Final = f"{CONF_DIR}/{CONF_KEY}"
PASSWORD_KEY: Final = "password"  # noqa: S105 - a key name
"""Key of the authenticator password in the consumer's Vault secret and Kubernetes Secret."""
JWT_SECRET_KEY: Final = "jwt_secret"  # noqa: S105 - a key name
"""Key of the HS256 secret (field ``jwt_secret`` of the Vault secret, docs/jwt-keys.md)."""
GATEWAY_API_VERSION: Final = "gateway.networking.k8s.io/v1"
RPS_METRIC: Final = "pgplatform_api_requests_per_second"
"""Object metric on the domain's Service (served by a metrics adapter from the gateway's
request counters); PostgREST itself exports no request metrics."""
DNS_NAMESPACE_LABEL: Final = "kubernetes.io/metadata.name"
KUBE_DNS_SELECTOR: Final = {"k8s-app": "kube-dns"}
PRESTOP_SLEEP_SECONDS: Final = 5
"""Time for the gateway to drop a terminating endpoint before PostgREST stops accepting."""
APP_NAME: Final = "postgrest"
APP_COMPONENT: Final = "api"

DB_CA_DIR: Final = "/etc/postgrest/db-ca"
DB_CA_KEY: Final = "ca.crt"
DB_CA_FILE: Final = f"{DB_CA_DIR}/{DB_CA_KEY}"
"""Where an API connecting to the database itself finds the server's CA (``sslrootcert``)."""

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def dns_name(domain: str) -> str:
    """The Kubernetes name form of a domain (``user_data`` -> ``user-data``)."""
    name = domain.replace("_", "-")
    if not _DNS_LABEL.fullmatch(name) or len(name) > 48:
        raise ValueError(
            f"domain {domain!r} gives no valid Kubernetes name ({name!r}): start with a letter, "
            "end with a letter or digit, at most 48 characters"
        )
    return name


def service_name(domain: str) -> str:
    """``<domain>-api``: the name of the API's Service (its in-cluster DNS name), Deployment,
    ServiceAccount, autoscaler, budget, policy and route, as operators and runbooks type it."""
    return f"{dns_name(domain)}-api"


def consumer_name(domain: str) -> str:
    """Vault consumer of a domain API (KV path, policy, role, ``<consumer>-secrets``)."""
    return f"{dns_name(domain)}-postgrest"


def jwks_secret_name(domain: str) -> str:
    """Secret the JWKS ExternalSecret writes (key ``jwks.json``)."""
    return f"{consumer_name(domain)}-jwks"


def route_prefix(domain: str) -> str:
    """Public path prefix of a domain API."""
    return f"/api/{domain}"


def pod_labels(domain: str) -> dict[str, str]:
    return pods.labels(APP_NAME, APP_COMPONENT, domain)


def selector(domain: str) -> dict[str, str]:
    return pods.selector_labels(APP_NAME, domain)


@dataclass(frozen=True, kw_only=True)
class ForwardAuth:
    """The gateway implementation's forward-auth filter, referenced as an ``ExtensionRef``."""

    group: str
    kind: str
    name: str


@dataclass(frozen=True, kw_only=True)
class GatewayParent:
    """The Gateway every route attaches to."""

    name: str
    namespace: str
    section_name: str | None = None
    forward_auth: ForwardAuth | None = None
    proxy_namespace: str | None = None
    """Namespace of the gateway's proxy pods (Envoy Gateway: its own namespace, by default
    ``envoy-gateway-system``); ``None`` means the Gateway's namespace."""
    proxy_selector: Mapping[str, str] = field(default_factory=dict)
    """Labels of the proxy pods within that namespace; empty admits the whole namespace."""

    def __post_init__(self) -> None:
        ns = self.proxy_namespace
        if ns is not None and (not _K8S_NAME.fullmatch(ns) or len(ns) > 63):
            raise ValueError(f"GatewayParent.proxy_namespace: not a namespace name, got {ns!r}")
        for key, value in self.proxy_selector.items():
            problem = pods.label_problem(key, value)
            if problem:
                raise ValueError(f"GatewayParent.proxy_selector: {problem}")


@dataclass(frozen=True, kw_only=True)
class DirectDatabase:
    """The database an API connects to itself, without PgBouncer (the CDC copies)."""

    egress: DatabaseEgress
    ca_secret: str | None = None
    """Secret whose ``ca.crt`` verifies the server (mounted at ``DB_CA_DIR``); None: no CA."""

    def __post_init__(self) -> None:
        if self.ca_secret is not None and not _K8S_NAME.fullmatch(self.ca_secret):
            raise ValueError(f"DirectDatabase.ca_secret: not a name, got {self.ca_secret!r}")


def gateway_peer(gateway: GatewayParent) -> dict[str, Any]:
    """NetworkPolicy peer of the gateway's proxies: their namespace, and their pods if named."""
    peer = _namespace(gateway.proxy_namespace or gateway.namespace)
    if gateway.proxy_selector:
        peer["podSelector"] = {"matchLabels": dict(gateway.proxy_selector)}
    return peer


@dataclass(frozen=True, kw_only=True)
class DomainApiSpec:
    """Everything the manifests of one domain API depend on, besides generated names."""

    domain: str
    namespace: str
    replicas_min: int
    replicas_max: int
    cpu_target: int = 70
    rps_target: int | None = None
    resources: pods.Resources
    auth_mode: Literal["hs256", "jwks"]
    gateway: GatewayParent
    public_host: str
    prometheus_namespace: str
    prober_selector: Mapping[str, str] | None = None
    """Pods (the blackbox exporter of the synthetic checks) admitted to the admin port's
    ``/ready``; None: only Prometheus reaches the admin port."""
    pgbouncer_selector: Mapping[str, str] = field(
        default_factory=lambda: pods.selector_labels("pgbouncer", "pgbouncer")
    )
    pgbouncer_port: int = 5432
    direct_database: DirectDatabase | None = None
    """Set for an API serving the CDC copies: it reaches this database, not PgBouncer."""
    dns_namespace: str = "kube-system"
    image: str = POSTGREST_IMAGE
    sidecar_image: str = JWT_RELOADER_IMAGE
    schema_poller_image: str = POSTGRES_IMAGE
    schema_poll_seconds: int = SCHEMA_POLL_SECONDS
    uid: int = pods.DEFAULT_UID

    def __post_init__(self) -> None:
        dns_name(self.domain)
        for name in ("namespace", "prometheus_namespace", "dns_namespace"):
            value = getattr(self, name)
            if not _K8S_NAME.fullmatch(value) or len(value) > 63:
                raise ValueError(f"DomainApiSpec.{name}: not a namespace name, got {value!r}")
        if not 1 <= self.replicas_min <= self.replicas_max:
            raise ValueError(
                f"DomainApiSpec.replicas_max: must be >= replicas_min >= 1, "
                f"got min {self.replicas_min}, max {self.replicas_max}"
            )
        if not 10 <= self.cpu_target <= 95:
            raise ValueError(f"DomainApiSpec.cpu_target: must be 10..95, got {self.cpu_target}")
        if self.rps_target is not None and self.rps_target < 1:
            raise ValueError(f"DomainApiSpec.rps_target: must be >= 1, got {self.rps_target}")
        if self.auth_mode not in ("hs256", "jwks"):
            raise ValueError(f"DomainApiSpec.auth_mode: 'hs256' or 'jwks', got {self.auth_mode!r}")
        if not _HOST.fullmatch(self.public_host):
            raise ValueError(f"DomainApiSpec.public_host: not a host name: {self.public_host!r}")
        poll = self.schema_poll_seconds
        if isinstance(poll, bool) or not isinstance(poll, int) or not 2 <= poll <= 300:
            raise ValueError(f"DomainApiSpec.schema_poll_seconds: must be 2..300, got {poll!r}")
        for image_field in ("image", "sidecar_image", "schema_poller_image"):
            image = getattr(self, image_field)
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                raise ValueError(f"DomainApiSpec.{image_field}: pin a version, got {image!r}")

    @property
    def jwt_file(self) -> str:
        return JWKS_FILE if self.auth_mode == "jwks" else HS256_SECRET_FILE


def conf_checksum(conf: str) -> str:
    """Pod-template annotation value: a new ``postgrest.conf`` rolls the pods."""
    return content_checksum(conf)


def _jwt_volume(spec: DomainApiSpec, secret_name: str) -> dict[str, Any]:
    if spec.auth_mode == "jwks":
        items = [{"key": JWKS_FILE_KEY, "path": JWKS_FILE.rsplit("/", 1)[-1]}]
        source = jwks_secret_name(spec.domain)
    else:
        # Only the JWT key lands in the key directory; the password stays an env var.
        items = [{"key": JWT_SECRET_KEY, "path": HS256_SECRET_FILE.rsplit("/", 1)[-1]}]
        source = secret_name
    return {
        "name": "jwt-keys",
        "secret": {"secretName": source, "items": items, "defaultMode": 0o440},
    }


def _postgrest_container(spec: DomainApiSpec, secret_name: str) -> dict[str, Any]:
    return {
        "name": "postgrest",
        "image": spec.image,
        "command": ["postgrest", CONF_FILE],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": [
            pods.secret_env(PGPASSWORD_ENV, secret_name, PASSWORD_KEY),
            {"name": "PGAPPNAME", "value": f"postgrest-{dns_name(spec.domain)}"},
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": CONF_DIR, "readOnly": True},
            {"name": "jwt-keys", "mountPath": JWT_KEY_DIR, "readOnly": True},
            *_db_ca_mounts(spec),
        ],
        "resources": spec.resources.to_k8s(),
        "securityContext": pods.container_security_context(spec.uid),
        "startupProbe": pods.http_probe("/live", "admin", period=2, failures=30),
        "livenessProbe": pods.http_probe("/live", "admin"),
        "readinessProbe": pods.http_probe("/ready", "admin", period=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
    }


def _db_ca_mounts(spec: DomainApiSpec) -> list[dict[str, Any]]:
    direct = spec.direct_database
    if direct is None or direct.ca_secret is None:
        return []
    return [{"name": "db-ca", "mountPath": DB_CA_DIR, "readOnly": True}]


def _db_ca_volumes(spec: DomainApiSpec) -> list[dict[str, Any]]:
    direct = spec.direct_database
    if direct is None or direct.ca_secret is None:
        return []
    items = [{"key": DB_CA_KEY, "path": DB_CA_KEY}]
    return [
        {
            "name": "db-ca",
            "secret": {"secretName": direct.ca_secret, "items": items, "defaultMode": 0o444},
        }
    ]


def _reloader_container(spec: DomainApiSpec) -> dict[str, Any]:
    return {
        "name": "jwt-key-reloader",
        "image": spec.sidecar_image,
        "command": ["sh", "-c", jwt_key_reload_script(spec.jwt_file)],
        "volumeMounts": [{"name": "jwt-keys", "mountPath": JWT_KEY_DIR, "readOnly": True}],
        "resources": {
            "requests": {"cpu": "5m", "memory": "8Mi"},
            "limits": {"cpu": "50m", "memory": "16Mi"},
        },
        "securityContext": pods.container_security_context(spec.uid),
        # Ready once the key file has content (PostgREST cannot verify tokens before that);
        # alive while the key directory is readable.
        "readinessProbe": _exec_probe(f"test -s {spec.jwt_file}"),
        "livenessProbe": _exec_probe(f"test -d {JWT_KEY_DIR}"),
    }


SCHEMA_RELOADER: Final = "schema-cache-reloader"
"""Container that polls the schema version and sends PostgREST ``SIGUSR1`` on a change."""
_POSTGREST_VISIBLE = (
    'for c in /proc/[0-9]*/comm; do { read -r n < "$c"; } 2>/dev/null && '
    '[ "$n" = postgrest ] && exit 0; done; exit 1'
)


def _schema_reloader_container(
    spec: DomainApiSpec, conf: PostgrestConfInput, secret_name: str
) -> dict[str, Any]:
    return {
        "name": SCHEMA_RELOADER,
        "image": spec.schema_poller_image,
        "command": ["sh", "-c", schema_reload_script((conf.schema,))],
        "env": [
            # PostgREST's own db-uri and password: the same pool, role and TLS settings.
            {"name": DB_URI_ENV, "value": db_uri(conf)},
            pods.secret_env(PGPASSWORD_ENV, secret_name, PASSWORD_KEY),
            {"name": "PGAPPNAME", "value": f"{SCHEMA_RELOADER}-{dns_name(spec.domain)}"},
            {"name": "PGCONNECT_TIMEOUT", "value": "5"},
            {"name": SCHEMA_POLL_ENV, "value": str(spec.schema_poll_seconds)},
        ],
        "resources": {
            "requests": {"cpu": "5m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        **({"volumeMounts": _db_ca_mounts(spec)} if _db_ca_mounts(spec) else {}),
        "securityContext": pods.container_security_context(spec.uid),
        # Ready while it can see the process it signals (shareProcessNamespace works);
        # alive while its client runs.
        "readinessProbe": _exec_probe(_POSTGREST_VISIBLE),
        "livenessProbe": _exec_probe("psql --version >/dev/null"),
    }


def _exec_probe(command: str) -> dict[str, Any]:
    return {
        "exec": {"command": ["sh", "-c", command]},
        "periodSeconds": 30,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }


def deployment_body(
    spec: DomainApiSpec,
    *,
    conf: PostgrestConfInput,
    config_map: pods.Placed,
    service_account: str,
    secret_name: str,
    conf_checksum: str,
    secrets_checksum: pods.Placed,
) -> dict[str, Any]:
    """``spec`` of the PostgREST Deployment (pod: wait-for-secrets, postgrest, two reloaders)."""
    sel = selector(spec.domain)
    pod_spec = pods.hardened_pod_spec(
        containers=[
            _postgrest_container(spec, secret_name),
            _reloader_container(spec),
            _schema_reloader_container(spec, conf, secret_name),
        ],
        init_containers=[
            wait_for_secret_container(
                secret_name,
                image=spec.sidecar_image,
                security_context=pods.container_security_context(spec.uid),
            )
        ],
        selector=sel,
        service_account=service_account,
        volumes=[
            {"name": "config", "configMap": {"name": config_map, "defaultMode": 0o440}},
            _jwt_volume(spec, secret_name),
            *_db_ca_volumes(spec),
        ],
        uid=spec.uid,
        share_process_namespace=True,
    )
    return {
        "spec": {
            "selector": {"matchLabels": sel},
            "strategy": pods.rolling_update(),
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": pod_labels(spec.domain),
                    "annotations": {
                        pods.CHECKSUM_ANNOTATION: conf_checksum,
                        SECRETS_CHECKSUM_ANNOTATION: secrets_checksum,
                    },
                },
                "spec": pod_spec,
            },
        }
    }


def service_body(spec: DomainApiSpec) -> dict[str, Any]:
    return {
        "spec": {
            "type": "ClusterIP",
            "selector": selector(spec.domain),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"},
            ],
        }
    }


def hpa_body(spec: DomainApiSpec, *, deployment: str) -> dict[str, Any]:
    """autoscaling/v2: CPU utilisation, plus requests per second per pod when configured."""
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": spec.cpu_target},
            },
        }
    ]
    if spec.rps_target is not None:
        metrics.append(
            {
                "type": "Object",
                "object": {
                    "describedObject": {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": service_name(spec.domain),
                    },
                    "metric": {"name": RPS_METRIC},
                    # AverageValue divides the Service's rate by the pod count: a per-pod target.
                    "target": {"type": "AverageValue", "averageValue": str(spec.rps_target)},
                },
            }
        )
    return {
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": spec.replicas_min,
            "maxReplicas": spec.replicas_max,
            "metrics": metrics,
        }
    }


def disruption_budget(replicas_min: int) -> dict[str, int]:
    """``minAvailable: 1`` when two or more replicas always run, else ``maxUnavailable: 1``."""
    return {"minAvailable": 1} if replicas_min >= 2 else {"maxUnavailable": 1}


def pdb_body(spec: DomainApiSpec) -> dict[str, Any]:
    return {
        "spec": {
            "selector": {"matchLabels": selector(spec.domain)},
            **disruption_budget(spec.replicas_min),
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        }
    }


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {DNS_NAMESPACE_LABEL: name}}}


def network_policy_body(spec: DomainApiSpec) -> dict[str, Any]:
    """API port from the gateway proxies, admin port from Prometheus (and the synthetic checks'
    prober); out: PgBouncer (or the database itself, for the CDC copies), DNS."""
    direct = spec.direct_database
    database = (
        {
            "to": [{"podSelector": {"matchLabels": dict(spec.pgbouncer_selector)}}],
            "ports": [{"protocol": "TCP", "port": spec.pgbouncer_port}],
        }
        if direct is None
        else {
            "to": [direct.egress.peer()],
            "ports": [{"protocol": "TCP", "port": direct.egress.port}],
        }
    )
    return {
        "spec": {
            "podSelector": {"matchLabels": selector(spec.domain)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [gateway_peer(spec.gateway)],
                    "ports": [{"protocol": "TCP", "port": HTTP_PORT}],
                },
                {
                    "from": [
                        _namespace(spec.prometheus_namespace),
                        *(
                            [{"podSelector": {"matchLabels": dict(spec.prober_selector)}}]
                            if spec.prober_selector
                            else []
                        ),
                    ],
                    "ports": [{"protocol": "TCP", "port": ADMIN_PORT}],
                },
            ],
            "egress": [
                database,
                {
                    "to": [
                        {
                            **_namespace(spec.dns_namespace),
                            "podSelector": {"matchLabels": dict(KUBE_DNS_SELECTOR)},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        }
    }


def http_route_body(spec: DomainApiSpec) -> dict[str, Any]:
    """``/api/<domain>`` on the gateway, forward-auth first, prefix stripped, to the Service."""
    parent: dict[str, Any] = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": spec.gateway.name,
        "namespace": spec.gateway.namespace,
    }
    if spec.gateway.section_name:
        parent["sectionName"] = spec.gateway.section_name
    filters: list[dict[str, Any]] = []
    auth = spec.gateway.forward_auth
    if auth is not None:
        filters.append(
            {
                "type": "ExtensionRef",
                "extensionRef": {"group": auth.group, "kind": auth.kind, "name": auth.name},
            }
        )
    filters.append(
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
        }
    )
    prefix = route_prefix(spec.domain)
    return {
        "spec": {
            "parentRefs": [parent],
            "hostnames": [spec.public_host],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                    "filters": filters,
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": service_name(spec.domain),
                            "port": HTTP_PORT,
                        }
                    ],
                }
            ],
        }
    }


def service_account_body() -> dict[str, Any]:
    """The pods never call the Kubernetes API: no token is mounted by default."""
    return {"automountServiceAccountToken": False}
