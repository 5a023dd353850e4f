"""The advisor's findings, their JSON report and the summary it logs.

A finding names the object, why it matters and the fix (a statement to run where there is
one). An object whose catalog comment says ``advisor: allow <check>`` (with the reason in the
same comment) is listed as acknowledged instead: the decision is recorded next to the object,
reviewed with it, and the run stays clean.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: Final[tuple[Severity, ...]] = ("error", "warning", "info")

# check id -> (severity, one line of what it looks for); the report and the docs list these.
CHECKS: Final[dict[str, tuple[Severity, str]]] = {
    "rls_per_row_claim": ("warning", "policy reads the JWT claims once per row"),
    "rls_disabled": ("error", "table in an exposed schema without row-level security"),
    "rls_no_policy": ("warning", "API roles hold privileges on a table without any policy"),
    "policy_overlap": ("warning", "permissive policies overlap for one role and action"),
    "policy_to_public": ("warning", "policy without TO roles (applies to PUBLIC)"),
    "with_check_true": ("error", "writable policy with WITH CHECK (true)"),
    "fk_unindexed": ("warning", "foreign key without an index on its columns"),
    "policy_column_unindexed": ("warning", "column a policy compares has no index"),
    "index_advice": ("info", "an index would make a heavy statement cheaper"),
    "definer_search_path": ("error", "SECURITY DEFINER function without a pinned search_path"),
    "dynamic_sql": ("error", "exposed function EXECUTEs a concatenated string"),
    "plpgsql_check": ("warning", "plpgsql_check security warning"),
}
_ALLOW: Final = re.compile(r"advisor:\s*allow\s+([a-z_]+(?:\s*,\s*[a-z_]+)*)")


def allowed_checks(comment: str | None) -> frozenset[str]:
    """Check ids an object's comment acknowledges (``advisor: allow a, b -- reason``)."""
    if not comment:
        return frozenset()
    found: set[str] = set()
    for match in _ALLOW.finditer(comment):
        found |= {part.strip() for part in match.group(1).split(",")}
    return frozenset(found)


@dataclass(frozen=True)
class Finding:
    check: str
    object: str
    why: str
    fix: str
    evidence: str = ""

    @property
    def severity(self) -> Severity:
        return CHECKS[self.check][0]

    def line(self) -> str:
        """The finding as one log line."""
        text = f"{self.severity.upper()} {self.check} {self.object}: {self.why} | fix: {self.fix}"
        return f"{text} | evidence: {self.evidence}" if self.evidence else text


@dataclass(frozen=True)
class Skipped:
    """A check (or part of one) that could not run here, and what would make it run."""

    check: str
    reason: str


@dataclass
class Report:
    database: str
    schemas: list[str]
    api_roles: list[str]
    findings: list[Finding] = field(default_factory=list)
    acknowledged: list[tuple[Finding, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, finding: Finding, comment: str | None = None) -> None:
        """Record a finding, or an acknowledgement when ``comment`` allows its check."""
        if finding.check in allowed_checks(comment):
            self.acknowledged.append((finding, str(comment)))
        else:
            self.findings.append(finding)

    def skip(self, check: str, reason: str) -> None:
        self.skipped.append(Skipped(check, reason))

    def counts(self) -> dict[str, int]:
        """Findings per check id (every check listed, zeros included)."""
        seen = Counter(f.check for f in self.findings)
        return {check: seen.get(check, 0) for check in CHECKS}

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "schemas": self.schemas,
            "api_roles": self.api_roles,
            "counts": self.counts(),
            "findings": [asdict(f) | {"severity": f.severity} for f in self.findings],
            "acknowledged": [
                asdict(f) | {"severity": f.severity, "comment": comment}
                for f, comment in self.acknowledged
            ],
            "skipped": [asdict(s) for s in self.skipped],
        }

    def dumps(self) -> str:
        return json.dumps(self.as_json(), indent=2, sort_keys=False)

    def summary(self) -> list[str]:
        """Log lines: one per finding and skipped check, then the totals."""
        lines = [f.line() for f in sorted(self.findings, key=_order)]
        lines += [f"SKIPPED {s.check}: {s.reason}" for s in self.skipped]
        by_severity = Counter(f.severity for f in self.findings)
        totals = " ".join(f"{sev}={by_severity.get(sev, 0)}" for sev in SEVERITIES)
        lines.append(
            f"advisor: database {self.database}: {len(self.findings)} findings ({totals}), "
            f"{len(self.acknowledged)} acknowledged, {len(self.skipped)} checks skipped"
        )
        return lines


def _order(finding: Finding) -> tuple[int, str, str]:
    return (SEVERITIES.index(finding.severity), finding.check, finding.object)
