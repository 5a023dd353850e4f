"""Service level objectives per API domain: recording rules and multi-window burn-rate alerts.

Two SLIs per domain, both read from the Envoy Gateway metrics of the domain's HTTPRoute (the
same series the API alerts read): availability (share of responses that are not 5xx) and
latency (share of requests answered within ``latency_p95_ms``, i.e. a p95 objective). The
error ratio of each SLI is recorded over the windows the alerts need, and the alerts follow the
SRE workbook's multi-window, multi-burn-rate table (also Sloth's defaults): page when the
budget burns 14.4x over 1h (and 5m) or 6x over 6h (and 30m), ticket at 3x over 1d (and 2h) or
1x over 3d (and 6h). The short window makes an alert stop soon after the burn stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from components.render import durations
from components.render.metrics_catalog import Selectors

# Envoy's default histogram buckets (ms) that fit an API latency objective; the latency SLI
# counts requests in the bucket ``le=<latency_p95_ms>``, so the objective must be a boundary.
LATENCY_BUCKETS_MS: Final = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_QUANTILE: Final = 0.95
# 14.4 x (1 - availability) must stay below 1, or the fastest page could never fire.
AVAILABILITY_MIN: Final = 95.0
AVAILABILITY_MAX: Final = 99.99
WINDOW_DAYS_MIN: Final = 7
WINDOW_DAYS_MAX: Final = 90

SLI_KINDS: Final = ("availability", "latency")
RATIO_RECORD: Final = "pgplatform:slo_errors:ratio_rate{window}"
BUDGET_RECORD: Final = "pgplatform:slo_error_budget:remaining"
FAST_BURN_ALERT: Final = "ApiErrorBudgetFastBurn"
SLOW_BURN_ALERT: Final = "ApiErrorBudgetSlowBurn"
ALERT_NAMES: Final = (FAST_BURN_ALERT, SLOW_BURN_ALERT)
GROUP_BURN: Final = "pgplatform-slo"
GROUP_BUDGET: Final = "pgplatform-slo-budget"


@dataclass(frozen=True)
class BurnWindows:
    """One row of the burn-rate table: both windows must exceed ``factor`` x the budget."""

    factor: float
    long: str
    short: str


# Alert -> (severity, windows): the workbook's page and ticket rows.
BURN_RATES: Final[dict[str, tuple[str, tuple[BurnWindows, ...]]]] = {
    FAST_BURN_ALERT: ("critical", (BurnWindows(14.4, "1h", "5m"), BurnWindows(6, "6h", "30m"))),
    SLOW_BURN_ALERT: ("warning", (BurnWindows(3, "1d", "2h"), BurnWindows(1, "3d", "6h"))),
}
RATE_WINDOWS: Final = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# Every series the SLO rules record (the alerts and the dashboard read them).
RECORDED_NAMES: Final = frozenset(
    {RATIO_RECORD.format(window=w) for w in RATE_WINDOWS} | {BUDGET_RECORD}
)


def availability_problem(value: float) -> str | None:
    """Why ``value`` (percent) cannot be an availability objective, or None."""
    if isinstance(value, bool) or not AVAILABILITY_MIN <= value <= AVAILABILITY_MAX:
        return (
            f"must be a percentage between {AVAILABILITY_MIN:g} and {AVAILABILITY_MAX:g} "
            "(e.g. 99.9): below 95 the 14.4x page can never fire, 100 leaves no error budget"
        )
    return None


def latency_problem(value: int) -> str | None:
    """Why ``value`` (ms) cannot be a latency objective, or None."""
    if isinstance(value, bool) or value not in LATENCY_BUCKETS_MS:
        return (
            "must be a bucket boundary of Envoy's upstream_rq_time histogram (the SLI counts "
            f"requests in that bucket); allowed: {list(LATENCY_BUCKETS_MS)}"
        )
    return None


def window_days(value: str) -> int:
    """Whole days of an SLO window; raises with the allowed range."""
    days = durations.whole_days(value)
    if not WINDOW_DAYS_MIN <= days <= WINDOW_DAYS_MAX:
        raise ValueError(
            f"{value!r}: an SLO window is {WINDOW_DAYS_MIN}d..{WINDOW_DAYS_MAX}d (e.g. '30d'; "
            "the burn-rate factors are the workbook's for 30 days)"
        )
    return days


@dataclass(frozen=True, kw_only=True)
class SloObjectives:
    """A domain's objectives: availability in percent, p95 latency in ms, the budget window."""

    availability: float
    latency_p95_ms: int
    window: str = "30d"

    def __post_init__(self) -> None:
        problem = availability_problem(self.availability)
        if problem:
            raise ValueError(f"availability: {problem} (got {self.availability!r})")
        problem = latency_problem(self.latency_p95_ms)
        if problem:
            raise ValueError(f"latency_p95_ms: {problem} (got {self.latency_p95_ms!r})")
        try:
            window_days(self.window)
        except ValueError as error:
            raise ValueError(f"window: {error}") from None

    def budget(self, kind: str) -> float:
        """Share of requests allowed to be bad: 1 - objective."""
        objective = self.availability / 100 if kind == "availability" else LATENCY_QUANTILE
        return round(1 - objective, 10)

    @property
    def promql_window(self) -> str:
        return f"{window_days(self.window)}d"


def _number(value: float) -> str:
    """A PromQL number literal without float noise (0.001, 14.4, 6)."""
    rounded = round(float(value), 10)
    return str(int(rounded)) if rounded.is_integer() else format(rounded, "g")


def _le_matcher(ms: int) -> str:
    """Prometheus 3 stores classic-histogram ``le`` as a float (``250.0``); 2.x as scraped."""
    return f'le=~"{ms}(\\\\.0)?"'


def error_ratio(sel: Selectors, domain: str, kind: str, slo: SloObjectives, window: str) -> str:
    """Share of bad requests of one SLI over ``window``."""
    route = sel.route(domain)
    if kind == "availability":
        return (
            f'sum(rate(envoy_cluster_upstream_rq_xx{{{route}, envoy_response_code_class="5"}}'
            f"[{window}])) / sum(rate(envoy_cluster_upstream_rq_xx{{{route}}}[{window}]))"
        )
    fast = f"envoy_cluster_upstream_rq_time_bucket{{{route}, {_le_matcher(slo.latency_p95_ms)}}}"
    return (
        f"1 - sum(rate({fast}[{window}]))"
        f" / sum(rate(envoy_cluster_upstream_rq_time_count{{{route}}}[{window}]))"
    )


def _series(name: str, namespace: str, domain: str, kind: str) -> str:
    return f'{name}{{namespace="{namespace}", domain="{domain}", slo="{kind}"}}'


def _describe(kind: str, slo: SloObjectives) -> str:
    if kind == "availability":
        return f"{_number(slo.availability)}% of responses not 5xx"
    return f"95% of requests answered within {slo.latency_p95_ms}ms"


def _alert(
    name: str, *, namespace: str, domain: str, kind: str, slo: SloObjectives, runbook_base: str
) -> dict[str, Any]:
    severity, rows = BURN_RATES[name]
    budget = _number(slo.budget(kind))
    record = RATIO_RECORD
    pairs = [
        f"({_series(record.format(window=row.long), namespace, domain, kind)}"
        f" > ({_number(row.factor)} * {budget})"
        f" and {_series(record.format(window=row.short), namespace, domain, kind)}"
        f" > ({_number(row.factor)} * {budget}))"
        for row in rows
    ]
    speeds = " or ".join(
        f"{_number(row.factor)}x over {row.long} (and {row.short})" for row in rows
    )
    fast = name == FAST_BURN_ALERT
    return {
        "alert": name,
        "expr": " or ".join(pairs),
        "for": "2m" if fast else "15m",
        "labels": {
            "severity": severity,
            "component": "api",
            "domain": domain,
            "namespace": namespace,
            "slo": kind,
        },
        "annotations": {
            "summary": (
                f"{domain} API burns its {kind} error budget {'fast' if fast else 'steadily'}"
            ),
            "description": (
                f"The {domain} API's {kind} SLO ({_describe(kind, slo)} over {slo.window}) "
                f"spends its error budget at more than {speeds} the rate that lasts the "
                "window: "
                + (
                    "at this pace the budget is gone within days."
                    if fast
                    else "at this pace the budget runs out before the window ends."
                )
            ),
            "runbook_url": f"{runbook_base}/{name}.md",
        },
    }


def slo_rule_groups(
    *,
    sel: Selectors,
    slos: Mapping[str, SloObjectives],
    runbook_base_url: str,
) -> list[dict[str, Any]]:
    """Recording rules per window, the budget left per SLO window, and the burn alerts."""
    namespace = sel.namespace
    base = runbook_base_url.rstrip("/")
    sli: list[dict[str, Any]] = []
    budget: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for domain, slo in slos.items():
        for kind in SLI_KINDS:
            labels = {"namespace": namespace, "domain": domain, "slo": kind}
            sli += [
                {
                    "record": RATIO_RECORD.format(window=window),
                    "expr": error_ratio(sel, domain, kind, slo, window),
                    "labels": dict(labels),
                }
                for window in RATE_WINDOWS
            ]
            budget.append(
                {
                    "record": BUDGET_RECORD,
                    "expr": (
                        f"1 - ({error_ratio(sel, domain, kind, slo, slo.promql_window)})"
                        f" / {_number(slo.budget(kind))}"
                    ),
                    "labels": {**labels, "window": slo.promql_window},
                }
            )
            alerts += [
                _alert(
                    name, namespace=namespace, domain=domain, kind=kind, slo=slo, runbook_base=base
                )
                for name in ALERT_NAMES
            ]
    return [
        # One group: Prometheus evaluates a group's rules in order, so each alert reads the
        # ratios recorded in the same evaluation (separate groups run independently).
        {"name": GROUP_BURN, "rules": sli + alerts},
        # Rates over the whole window are costly and change slowly: every 5 minutes is enough.
        {"name": GROUP_BUDGET, "interval": "5m", "rules": budget},
    ]


def recorded_names(groups: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """Metric names the recording rules of ``groups`` produce."""
    return frozenset(
        rule["record"] for group in groups for rule in group["rules"] if "record" in rule
    )
