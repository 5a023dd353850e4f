"""The GraphQL pilot's metrics: what Prometheus scrapes and the alerts on it.

The pilot's rc file (``render.postgraphile``) carries a PostGraphile server plugin that counts
every operation with prom-client and serves ``/metrics`` on a port of its own
(``postgraphile.METRICS_PORT``); the ServiceMonitor scrapes the ``metrics`` port of Service
``graphql-api``, so the series carry ``job="graphql-api"``. Names are proven against a real
PostGraphile run (tests/integration/test_graphql_pilot.py).
"""

from __future__ import annotations

from typing import Any, Final

from components.render.graphql_workload import SERVICE_NAME
from components.render.promql import number as num
from components.render.promql import percent

JOB: Final = SERVICE_NAME
"""Scrape ``job`` of the pilot: the name of the Service the ServiceMonitor finds."""
ERROR_ALERT: Final = "GraphqlHighErrorRate"
SLOW_ALERT: Final = "GraphqlSlowResponses"
ALERT_NAMES: Final = (ERROR_ALERT, SLOW_ALERT)
RULE_GROUP: Final = "pgplatform-graphql"
REQUESTS: Final = "pgplatform_graphql_requests_total"
DURATION_BUCKET: Final = "pgplatform_graphql_request_duration_seconds_bucket"


def rule_group(
    *,
    namespace: str,
    error_ratio: float,
    min_request_rate: float,
    slow_seconds: float,
    runbook_base_url: str,
) -> dict[str, Any]:
    """5xx share and p95 response time of the pilot, judged only with enough traffic."""
    if slow_seconds <= 0:
        raise ValueError(f"slow_seconds: must be positive, got {slow_seconds}")
    base = runbook_base_url.rstrip("/")
    sel = f'namespace="{namespace}", job="{JOB}"'
    total = f"sum(rate({REQUESTS}{{{sel}}}[5m]))"
    enough = f"{total} > {num(min_request_rate)}"
    failed = f'sum(rate({REQUESTS}{{{sel}, status=~"5.."}}[5m]))'
    p95 = f"histogram_quantile(0.95, sum by (le) (rate({DURATION_BUCKET}{{{sel}}}[5m])))"
    labels = {"component": "graphql", "namespace": namespace}

    def alert(
        name: str, severity: str, expr: str, for_: str, *, summary: str, text: str
    ) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, **labels},
            "annotations": {
                "summary": summary,
                "description": text,
                "runbook_url": f"{base}/{name}.md",
            },
        }

    return {
        "name": RULE_GROUP,
        "rules": [
            alert(
                ERROR_ALERT,
                "warning",
                f"({failed} / {total}) > {num(error_ratio)} and {enough}",
                "5m",
                summary=(
                    "GraphQL pilot: {{ $value | humanizePercentage }} of operations fail with 5xx"
                ),
                text=f"More than {percent(error_ratio)} of the GraphQL pilot's operations were "
                "answered with HTTP 5xx over 5 minutes (database or pool unreachable, a "
                "server error), as counted by its own metrics plugin.",
            ),
            alert(
                SLOW_ALERT,
                "warning",
                f"{p95} > {num(slow_seconds)} and {enough}",
                "10m",
                summary="GraphQL pilot: p95 response time is {{ $value | humanizeDuration }}",
                text=f"The 95th percentile of the GraphQL pilot's response time stayed above "
                f"{num(slow_seconds)}s for 10 minutes (observability.graphql.slowSeconds).",
            ),
        ],
    }
