"""Synthetic checks: a blackbox exporter, the Probes that drive it, and the alerts on failure.

The API alerts read Envoy's counters, which only move when clients send requests: a route that
nobody calls, a Gateway that lost its listener or a certificate that expired stays silent. The
blackbox exporter sends one request per check and interval, from inside the cluster, the way a
client would:

* ``public``: ``GET <publicBaseUrl>/api/<domain>/`` through the gateway, without a token. With
  anonymous access on (staging) PostgREST answers 200 with its OpenAPI document; with it off
  (prod) the answer must be 401. Anything else (5xx, 404 from a lost route, 200 where anonymous
  access should be off, a timeout) fails the check.
* ``ready``: ``GET /ready`` on the PostgREST admin port through the domain's Service. A Service
  only routes to ready pods, so this fails exactly when no PostgREST pod of the domain is ready
  (the backend is down, whatever the gateway does).

Prometheus (Operator ``Probe`` objects) asks the exporter for each target; every series carries
``job`` = :data:`JOB`, ``domain`` and ``check``, and the Operator adds ``namespace``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from components.render import durations, pods
from components.render.metrics_catalog import SOURCES

_SOURCE: Final = next(s for s in SOURCES if s.name == "blackbox_exporter")
BLACKBOX_EXPORTER_VERSION: Final = _SOURCE.version
BLACKBOX_EXPORTER_IMAGE: Final = _SOURCE.image or ""
"""The release the integration tests run (Debian's prometheus-blackbox-exporter 0.23.0)."""
NAME: Final = "blackbox-exporter"
"""Deployment, Service, ServiceAccount and NetworkPolicy name."""
PORT: Final = 9115
UID: Final = 65534
"""The image's own ``nobody`` user."""
CONFIG_KEY: Final = "blackbox.yml"
CONFIG_DIR: Final = "/etc/blackbox-exporter"
JOB: Final = "pgplatform-synthetic"
"""``job`` label of every probe result (the Probes' ``jobName``)."""

CHECK_PUBLIC: Final = "public"
CHECK_READY: Final = "ready"
CHECKS: Final = (CHECK_PUBLIC, CHECK_READY)
MODULE_PUBLIC_OPEN: Final = "api_public_anonymous_200"
MODULE_PUBLIC_CLOSED: Final = "api_public_anonymous_401"
MODULE_READY: Final = "postgrest_ready"
OPENAPI_BODY: Final = r'"swagger" *: *"2\.0"'
"""PostgREST's root answers an anonymous GET with its OpenAPI (Swagger 2.0) document."""

PUBLIC_ALERT: Final = "ApiSyntheticCheckFailed"
READY_ALERT: Final = "PostgrestNotReady"
MISSING_ALERT: Final = "SyntheticChecksMissing"
ALERT_NAMES: Final = (PUBLIC_ALERT, READY_ALERT, MISSING_ALERT)
RULE_GROUP: Final = "pgplatform-synthetic"

INTERVAL_SECONDS: Final = (10, 300)
TIMEOUT_SECONDS: Final = (1, 60)
SCRAPE_SLACK_SECONDS: Final = 1
"""The scrape waits this much longer than the probe, so the module's timeout decides (the
exporter cuts a probe at the scrape timeout minus its 0.5 s offset)."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def interval_problem(interval: str, timeout: str) -> str | None:
    """Why ``interval``/``timeout`` cannot drive a probe, or None."""
    try:
        every = durations.parse_duration(interval)
        wait = durations.parse_duration(timeout)
    except ValueError as error:
        return str(error)
    if not (every.is_integer() and wait.is_integer()):
        return f"interval and timeout are whole seconds, got {interval!r} and {timeout!r}"
    if not INTERVAL_SECONDS[0] <= every <= INTERVAL_SECONDS[1]:
        return f"interval must be {INTERVAL_SECONDS[0]}s..{INTERVAL_SECONDS[1]}s, got {interval!r}"
    if not TIMEOUT_SECONDS[0] <= wait <= TIMEOUT_SECONDS[1]:
        return f"timeout must be {TIMEOUT_SECONDS[0]}s..{TIMEOUT_SECONDS[1]}s, got {timeout!r}"
    if wait + SCRAPE_SLACK_SECONDS > every:
        return (
            f"timeout ({timeout}) plus {SCRAPE_SLACK_SECONDS}s must fit in the interval "
            f"({interval}): a probe must end before the next starts"
        )
    return None


@dataclass(frozen=True, kw_only=True)
class SyntheticChecks:
    """What the checks of one stack probe, and how often."""

    namespace: str
    public_base_url: str
    domains: tuple[str, ...]
    anonymous: bool
    """Anonymous access on: the public check wants 200 (OpenAPI); off: 401."""
    ready_services: Mapping[str, str]
    """Domain -> PostgREST Service whose admin port serves ``/ready``."""
    admin_port: int
    interval: str = "30s"
    timeout: str = "5s"
    prometheus_namespace: str = "monitoring"
    dns_namespace: str = "kube-system"
    image: str = BLACKBOX_EXPORTER_IMAGE

    def __post_init__(self) -> None:
        for field in ("namespace", "prometheus_namespace", "dns_namespace"):
            value = getattr(self, field)
            if not _DNS_LABEL.match(value) or len(value) > 63:
                raise ValueError(f"{field}: not a namespace name, got {value!r}")
        url = urlsplit(self.public_base_url)
        if url.scheme != "https" or not url.hostname or url.path not in ("", "/"):
            raise ValueError(
                f"public_base_url: 'https://<host>[:port]' expected, got {self.public_base_url!r}"
            )
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains: one or more distinct domains, got {list(self.domains)}")
        if set(self.ready_services) != set(self.domains):
            raise ValueError("ready_services: needs exactly one Service per domain")
        problem = interval_problem(self.interval, self.timeout)
        if problem:
            raise ValueError(problem)
        if ":" not in self.image.rsplit("/", 1)[-1] or self.image.endswith(":latest"):
            raise ValueError(f"image: pin a version, got {self.image!r}")

    @property
    def public_port(self) -> int:
        return urlsplit(self.public_base_url).port or 443

    @property
    def public_module(self) -> str:
        return MODULE_PUBLIC_OPEN if self.anonymous else MODULE_PUBLIC_CLOSED

    def public_url(self, domain: str) -> str:
        """The API root of ``domain`` as clients call it (the HTTPRoute's ``/api/<domain>``)."""
        return f"{self.public_base_url.rstrip('/')}/api/{domain}/"

    def ready_url(self, domain: str) -> str:
        service = self.ready_services[domain]
        return f"http://{service}.{self.namespace}.svc:{self.admin_port}/ready"


def blackbox_config(checks: SyntheticChecks) -> str:
    """``blackbox.yml``: one module per expectation, no redirects followed, IPv4 first."""

    def http_module(codes: list[int], **extra: Any) -> dict[str, Any]:
        return {
            "prober": "http",
            "timeout": checks.timeout,
            "http": {
                "method": "GET",
                "valid_status_codes": codes,
                "follow_redirects": False,
                "preferred_ip_protocol": "ip4",
                **extra,
            },
        }

    modules = {
        MODULE_PUBLIC_OPEN: http_module(
            [200],
            headers={"Accept": "application/openapi+json"},
            fail_if_body_not_matches_regexp=[OPENAPI_BODY],
            fail_if_not_ssl=True,
        ),
        MODULE_PUBLIC_CLOSED: http_module([401], fail_if_not_ssl=True),
        MODULE_READY: http_module([200]),
    }
    return yaml.safe_dump({"modules": modules}, sort_keys=False)


def exporter_labels() -> dict[str, str]:
    return pods.labels(NAME, "monitoring", NAME)


def exporter_selector() -> dict[str, str]:
    return pods.selector_labels(NAME, NAME)


def probe_name(domain: str, check: str) -> str:
    return f"{domain}-api-{check}"


def probe_spec(checks: SyntheticChecks, domain: str, check: str) -> dict[str, Any]:
    """A ``Probe`` spec: one target, labelled with its domain and check."""
    if check not in CHECKS:
        raise ValueError(f"check: one of {CHECKS}, got {check!r}")
    public = check == CHECK_PUBLIC
    scrape_timeout = int(durations.parse_duration(checks.timeout)) + SCRAPE_SLACK_SECONDS
    return {
        "jobName": JOB,
        "interval": checks.interval,
        "scrapeTimeout": f"{scrape_timeout}s",
        "module": checks.public_module if public else MODULE_READY,
        "prober": {"url": f"{NAME}.{checks.namespace}.svc:{PORT}", "scheme": "http"},
        "targets": {
            "staticConfig": {
                "static": [checks.public_url(domain) if public else checks.ready_url(domain)],
                "labels": {"domain": domain, "check": check},
            }
        },
    }


def probes(checks: SyntheticChecks) -> dict[str, dict[str, Any]]:
    """Probe name -> spec, both checks of every domain."""
    return {
        probe_name(domain, check): probe_spec(checks, domain, check)
        for domain in checks.domains
        for check in CHECKS
    }


def deployment_spec(
    checks: SyntheticChecks, *, config_map: pods.Placed, config_checksum: str
) -> dict[str, Any]:
    """One exporter (it is stateless and probes are retried every interval), hardened."""
    container: dict[str, Any] = {
        "name": NAME,
        "image": checks.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            f"--config.file={CONFIG_DIR}/{CONFIG_KEY}",
            f"--web.listen-address=:{PORT}",
            "--log.format=json",
            "--log.level=warn",
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "200m", "memory": "64Mi"},
        },
        "securityContext": pods.container_security_context(UID),
        "livenessProbe": pods.http_probe("/-/healthy", "http", period=20),
        "readinessProbe": pods.http_probe("/-/healthy", "http"),
    }
    pod_spec = pods.hardened_pod_spec(
        containers=[container],
        selector=exporter_selector(),
        service_account=NAME,
        volumes=[{"name": "config", "configMap": {"name": config_map, "defaultMode": 0o444}}],
        uid=UID,
    )
    return {
        "replicas": 1,
        "selector": {"matchLabels": exporter_selector()},
        "strategy": pods.rolling_update(),
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": exporter_labels(),
                "annotations": {pods.CHECKSUM_ANNOTATION: config_checksum},
            },
            "spec": pod_spec,
        },
    }


def service_spec() -> dict[str, Any]:
    return {
        "type": "ClusterIP",
        "selector": exporter_selector(),
        "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
    }


def _namespace_peer(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def network_policy_spec(
    checks: SyntheticChecks, *, postgrest_selector: Mapping[str, str]
) -> dict[str, Any]:
    """In: Prometheus on the probe port. Out: the gateway's public port, PostgREST's admin port,
    DNS. The gateway's address is outside what a NetworkPolicy can name: port-scoped only."""
    return {
        "podSelector": {"matchLabels": exporter_selector()},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [_namespace_peer(checks.prometheus_namespace)],
                "ports": [{"protocol": "TCP", "port": PORT}],
            }
        ],
        "egress": [
            {"ports": [{"protocol": "TCP", "port": checks.public_port}]},
            {
                "to": [{"podSelector": {"matchLabels": dict(postgrest_selector)}}],
                "ports": [{"protocol": "TCP", "port": checks.admin_port}],
            },
            {
                "to": [
                    {
                        **_namespace_peer(checks.dns_namespace),
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
        ],
    }


# -- alerts ---------------------------------------------------------------------------------------


def _alert(
    name: str, *, severity: str, expr: str, for_: str, summary: str, description: str, base: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "component": "api"},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{base}/{name}.md",
        },
    }


def rule_group(*, namespace: str, anonymous: bool, runbook_base_url: str) -> dict[str, Any]:
    """Alerts on the probe results: a failing check per domain, and no results at all."""
    base = runbook_base_url.rstrip("/")
    results = f'probe_success{{namespace="{namespace}", job="{JOB}"'
    expected = "200 with the OpenAPI document" if anonymous else "401 (anonymous access is off)"
    by = "namespace, domain, instance"
    return {
        "name": RULE_GROUP,
        "rules": [
            _alert(
                PUBLIC_ALERT,
                severity="critical",
                expr=f'min by ({by}) ({results}, check="{CHECK_PUBLIC}"}}) == 0',
                for_="3m",
                summary="{{ $labels.domain }} API: the synthetic request through the gateway fails",
                description=(
                    "An anonymous GET of {{ $labels.instance }} has not answered "
                    f"{expected} for 3 minutes: clients cannot reach the "
                    "{{ $labels.domain }} API through the gateway (route, listener, "
                    "certificate, PostgREST or database)."
                ),
                base=base,
            ),
            _alert(
                READY_ALERT,
                severity="critical",
                expr=f'min by ({by}) ({results}, check="{CHECK_READY}"}}) == 0',
                for_="3m",
                summary="{{ $labels.domain }} API: no PostgREST pod answers /ready",
                description=(
                    "GET {{ $labels.instance }} (the admin port of the domain's Service, which "
                    "routes only to ready pods) has failed for 3 minutes: no PostgREST pod of "
                    "the {{ $labels.domain }} API is ready to serve."
                ),
                base=base,
            ),
            _alert(
                MISSING_ALERT,
                severity="warning",
                expr=f"absent({results}}})",
                for_="10m",
                summary="No synthetic check results reach Prometheus",
                description=(
                    f"No probe_success series of job {JOB} in namespace {namespace} for 10 "
                    f"minutes: the {NAME} Deployment is down or Prometheus does not select "
                    "the Probe objects, and the API is checked by nobody."
                ),
                base=base,
            ),
        ],
    }
