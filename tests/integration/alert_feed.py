"""The rendered alert rules evaluated by the real promtool on series taken from a real run.

Backup and restore alerts read metrics that something else derives from what Barman Cloud and the
restore check do: the Barman Cloud plugin exports its ObjectStore's recovery window, which it
computes from the backup catalogue; kube-state-metrics exports the restore check Job's status,
which follows the script's exit code. The functions here derive those series from a real
catalogue and a real run, the way those exporters do, and ask promtool whether an alert fires at a
given wall-clock moment.

promtool's clock starts at 0, so the input is shifted: moment ``at`` becomes ``LEAD`` on its clock
and every series holding a Unix timestamp is shifted by the same amount. The rules only ever
compare timestamps with ``time()`` or with each other, so the shift changes no result.
"""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.tooling import require_tool

LEAD_MINUTES = 180
"""Minutes of constant input before the moment asked about: longer than any rule's ``for``."""

PLUGIN_METRICS = (
    Path(__file__).resolve().parent.parent / "data" / "metrics" / "plugin-barman-cloud-0.14.0.txt"
)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool", "prometheus")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    return path


@dataclass(frozen=True)
class Series:
    """One input series; ``timestamp``: its value is a Unix time, shifted with the clock."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp: bool = True

    def selector(self) -> str:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{self.name}{{{inner}}}"


@dataclass
class AlertProbe:
    """The rule group holding one alert, from a rendered ``PrometheusRule`` spec."""

    rule_specs: Sequence[Mapping[str, Any]]
    alert: str
    workdir: Path
    _runs: int = field(default=0, init=False)

    def group(self) -> dict[str, Any]:
        for spec in self.rule_specs:
            for group in spec["groups"]:
                if any(rule.get("alert") == self.alert for rule in group["rules"]):
                    return dict(group)
        raise AssertionError(f"no rendered rule group holds alert {self.alert}")

    def firing(self, series: Iterable[Series], *, at: float) -> bool:
        """Whether the alert is firing at Unix time ``at`` after the series held for a while."""
        origin = at - LEAD_MINUTES * 60
        inputs = [
            {
                "series": s.selector(),
                "values": f"{_num(s.value - origin if s.timestamp else s.value)}x{LEAD_MINUTES}",
            }
            for s in series
        ]
        query = f'count(ALERTS{{alertname="{self.alert}", alertstate="firing"}}) or vector(0)'
        self._runs += 1
        rules = write_yaml(self.workdir / f"rules-{self._runs}.yaml", {"groups": [self.group()]})
        answers = {}
        for expected in (0, 1):
            test = write_yaml(
                self.workdir / f"test-{self._runs}-{expected}.yaml",
                {
                    "rule_files": [rules.name],
                    "evaluation_interval": "1m",
                    "tests": [
                        {
                            "interval": "1m",
                            "input_series": inputs,
                            "promql_expr_test": [
                                {
                                    "expr": query,
                                    "eval_time": f"{LEAD_MINUTES}m",
                                    "exp_samples": [{"value": expected}],
                                }
                            ],
                        }
                    ],
                },
            )
            result = promtool("test", "rules", test.name, cwd=self.workdir)
            answers[expected] = result.returncode == 0
            if answers[expected]:
                return bool(expected)
        raise AssertionError(f"promtool evaluated neither 0 nor 1 firing {self.alert}: {answers}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def plugin_metric_names() -> set[str]:
    lines = PLUGIN_METRICS.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def plugin_recovery_window(
    backups: Sequence[Mapping[str, Any]], *, namespace: str, pod: str
) -> list[Series]:
    """What the Barman Cloud plugin exports for this catalogue (``barman-cloud-backup-list``).

    The plugin sets the ObjectStore's ``serverRecoveryWindow`` from the catalogue: the last
    successful backup is the newest finished one's end, the first recoverability point the
    oldest finished one's end; its instance metrics report both, 0 before any backup.
    """
    done = sorted(
        (_epoch(b["end_time_iso"]) for b in backups if b.get("status") == "DONE"),
    )
    labels = {"namespace": namespace, "pod": pod}
    values = {
        "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp": done[-1] if done else 0,
        "barman_cloud_cloudnative_pg_io_first_recoverability_point": done[0] if done else 0,
    }
    unknown = set(values) - plugin_metric_names()
    assert not unknown, f"not metrics of the plugin release we validate against: {unknown}"
    return [Series(name, labels, value, timestamp=value != 0) for name, value in values.items()]


@dataclass(frozen=True)
class RestoreCheckRun:
    """One run of the restore check's script: when it started, ended, and its exit code."""

    started: float
    finished: float
    exit_code: int


def restore_check_job_status(
    cronjob: Mapping[str, Any], run: RestoreCheckRun, *, created: float
) -> list[Series]:
    """What kube-state-metrics exports for the CronJob and the Job this run's pod belongs to.

    The Job fails with its pod only while ``backoffLimit`` is 0 (the rendered value); the
    CronJob controller names its Jobs ``<cronjob>-<scheduled Unix minute>``.
    """
    template = cronjob["spec"]["jobTemplate"]["spec"]
    assert template.get("backoffLimit") == 0, "one failed pod fails the Job only without retries"
    namespace = cronjob["metadata"]["namespace"]
    name = cronjob["metadata"]["name"]
    job = {"namespace": namespace, "job_name": f"{name}-{int(run.started // 60)}"}
    failed = run.exit_code != 0
    series = [
        Series("kube_cronjob_created", {"namespace": namespace, "cronjob": name}, created),
        Series("kube_job_status_start_time", job, run.started),
        Series("kube_job_failed", {**job, "condition": "true"}, int(failed), timestamp=False),
        Series("kube_job_failed", {**job, "condition": "false"}, int(not failed), timestamp=False),
    ]
    if not failed:
        series.append(
            Series(
                "kube_cronjob_status_last_successful_time",
                {"namespace": namespace, "cronjob": name},
                run.finished,
            )
        )
    return series
