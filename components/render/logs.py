"""Request logs with route, role and row count: the gateway's JSON access log, and Loki rules.

PostgREST v14 logs one Apache-style text line per request to stdout (client, role claim, request
line, status, body size; no JSON, no row count, no request id), and its server log on stderr. So
the one place where a request's route, status, duration and row count meet is the gateway: Envoy
writes a JSON access log whose fields are command operators, and two response headers carry
what only PostgREST and the database know:

* ``Content-Range`` (PostgREST): ``<first>-<last>/<total or *>`` for the rows of a read, ``*/0``
  or ``*/*`` when none were returned; rows = last - first + 1;
* ``X-Api-Role`` (``platform.pre_request()``): the role the request ran as, after the group
  mapping.

The access-log format belongs to the gateway's installation (Envoy Gateway's ``EnvoyProxy``
``spec.telemetry.accessLog``), so this module renders it for the gateway operator to apply;
what the stack deploys itself is the Loki rule file (a recording rule of rows per route and
role, in LogQL) and the dashboard panel, when ``observability.loki`` is on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

ROLE_HEADER: Final = "X-Api-Role"
"""Response header platform.pre_request() sets to the final role (db/020_platform.sql)."""
LOG_MARKER_FIELD: Final = "log_type"
LOG_MARKER: Final = "pgplatform-access"
"""A constant field of every line of this format: the LogQL line filter finds them cheaply."""

ACCESS_LOG_FIELDS: Final[Mapping[str, str]] = {
    LOG_MARKER_FIELD: LOG_MARKER,
    "start_time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "route": "%UPSTREAM_CLUSTER%",
    "status": "%RESPONSE_CODE%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_sent": "%BYTES_SENT%",
    "content_range": "%RESP(CONTENT-RANGE)%",
    "role": f"%RESP({ROLE_HEADER.upper()})%",
    "response_flags": "%RESPONSE_FLAGS%",
    "user_agent": "%REQ(USER-AGENT)%",
}
"""Field -> Envoy command operator. ``route`` is the upstream cluster, which Envoy Gateway names
``httproute/<namespace>/<route>/rule/<n>`` (the same label the Envoy metrics carry); the path is
the one the client sent (before the route's prefix rewrite). A missing header logs ``-``."""

ROWS_RECORD: Final = "pgplatform:api_rows_returned:rate5m"
REQUESTS_RECORD: Final = "pgplatform:api_logged_requests:rate5m"
RULE_GROUP: Final = "pgplatform-logs"
RULE_FILE: Final = "pgplatform-logs.yaml"
RULES_CONFIG_MAP: Final = "pgplatform-loki-rules"
# Content-Range of returned rows: "<first>-<last>/<total or *>" (RE2 and Python agree on it).
CONTENT_RANGE_PATTERN: Final = r'"content_range": ?"(?P<first_row>[0-9]+)-(?P<last_row>[0-9]+)/'

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def stream_labels_problem(labels: Mapping[str, str]) -> str | None:
    """Why ``labels`` cannot select a Loki stream, or None."""
    if not labels:
        return (
            "at least one label selects the gateway's log, e.g. {namespace: envoy-gateway-system}"
        )
    for key, value in labels.items():
        if not _LABEL_NAME.match(key):
            return f"{key!r} is not a Loki label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        if not value or '"' in value or "\\" in value or "`" in value:
            return f"{key}: {value!r} must be a non-empty value without quotes or backslashes"
    return None


def envoy_proxy_access_log() -> dict[str, Any]:
    """``EnvoyProxy.spec.telemetry`` (gateway.envoyproxy.io/v1alpha1): JSON lines on stdout."""
    return {
        "accessLog": {
            "settings": [
                {
                    "format": {"type": "JSON", "json": dict(ACCESS_LOG_FIELDS)},
                    "sinks": [{"type": "File", "file": {"path": "/dev/stdout"}}],
                }
            ]
        }
    }


@dataclass(frozen=True, kw_only=True)
class LokiLogs:
    """Where the gateway's access log lands in Loki and which of its routes are this stack's."""

    namespace: str
    """The stack's namespace: its routes are ``httproute/<namespace>/<name>/rule/<n>``."""
    route_names: tuple[str, ...]
    """HTTPRoute names of the stack (``<domain>-api``)."""
    stream_labels: Mapping[str, str]
    """Loki stream labels of the gateway proxies' log (the collector's Kubernetes labels)."""
    datasource_uid: str = "loki"
    rule_labels: Mapping[str, str] = field(default_factory=lambda: {"loki_rule": "1"})

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace: not a namespace name, got {self.namespace!r}")
        if not self.route_names or not all(_DNS_LABEL.match(n) for n in self.route_names):
            raise ValueError(f"route_names: DNS labels expected, got {list(self.route_names)}")
        problem = stream_labels_problem(self.stream_labels)
        if problem:
            raise ValueError(f"stream_labels: {problem}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self.datasource_uid):
            raise ValueError(f"datasource_uid: a Grafana uid, got {self.datasource_uid!r}")

    @property
    def selector(self) -> str:
        matchers = ", ".join(f'{k}="{v}"' for k, v in sorted(self.stream_labels.items()))
        return f"{{{matchers}}}"

    @property
    def route_regex(self) -> str:
        names = "|".join(sorted(self.route_names))
        return f"httproute/{self.namespace}/({names})/rule/[0-9]+"


def access_log_pipeline(logs: LokiLogs) -> str:
    """The stack's access-log lines with ``route`` and ``role`` labels (LogQL log query)."""
    return (
        f'{logs.selector} |= "{LOG_MARKER}"'
        f' | json route="route", role="role", status="status"'
        f' | route=~"{logs.route_regex}"'
    )


def rows_query(logs: LokiLogs, window: str = "5m") -> str:
    """Rows returned per second, by route and role (LogQL metric query).

    Only responses with a row range count (reads that returned rows); ``rows`` is computed from
    the range's bounds, and lines whose range does not parse are dropped (``__error__``).
    """
    return (
        "sum by (route, role) (rate("
        f"{access_log_pipeline(logs)}"
        f" | regexp `{CONTENT_RANGE_PATTERN}`"
        " | label_format rows=`{{ add (sub .last_row .first_row) 1 }}`"
        f' | unwrap rows | __error__="" [{window}]))'
    )


def requests_query(logs: LokiLogs, window: str = "5m") -> str:
    """Logged requests per second, by route, role and status (LogQL metric query)."""
    return (
        f"sum by (route, role, status) (count_over_time({access_log_pipeline(logs)} [{window}]))"
        f" / {_seconds(window)}"
    )


def _seconds(window: str) -> int:
    match = re.fullmatch(r"([0-9]+)([smh])", window)
    if not match:
        raise ValueError(f"window: e.g. '5m', got {window!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def loki_rules(logs: LokiLogs) -> dict[str, Any]:
    """The Loki ruler's rule file: rows and requests per route and role, recorded every minute
    (the ruler remote-writes them to Prometheus, where alerts and dashboards can use them)."""
    return {
        "groups": [
            {
                "name": RULE_GROUP,
                "interval": "1m",
                "rules": [
                    {
                        "record": record,
                        "expr": expr,
                        "labels": {"namespace": logs.namespace},
                    }
                    for record, expr in (
                        (ROWS_RECORD, rows_query(logs)),
                        (REQUESTS_RECORD, requests_query(logs)),
                    )
                ],
            }
        ]
    }


def loki_rules_yaml(logs: LokiLogs) -> str:
    return yaml.safe_dump(loki_rules(logs), sort_keys=False, width=1000)
