"""Cron schedules in the two dialects the stack writes, checked with croniter.

A Kubernetes CronJob takes five fields (minute hour day-of-month month day-of-week); a
CloudNativePG ScheduledBackup takes six, seconds first. The same text means different times in
the two (``0 4 1 * *`` is "04:00 on the 1st" for a CronJob and an error for CloudNativePG), so the
field count is checked before croniter checks every field's values. Both accept the descriptors
``@yearly``, ``@monthly``, ``@weekly``, ``@daily``, ``@hourly`` (and ``@annually``, ``@midnight``).
``check_cronjob_spec`` is the CronJob shape of the scheduled checks an alert reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from croniter import croniter

_WORDS: Final = {5: "five", 6: "six"}
_MACRO: Final = re.compile(r"@(yearly|annually|monthly|weekly|daily|midnight|hourly)")


def _check(schedule: object, *, fields: int, seconds_first: bool, example: str, what: str) -> str:
    if not isinstance(schedule, str):
        raise ValueError(f"{schedule!r} is not a schedule: write {what}, e.g. {example!r}")
    if _MACRO.fullmatch(schedule):
        return schedule
    count = len(schedule.split())
    if count != fields:
        raise ValueError(
            f"{schedule!r} has {count} fields; {what} needs {_WORDS[fields]} fields, "
            f"e.g. {example!r}"
        )
    if not croniter.is_valid(schedule, second_at_beginning=seconds_first):
        raise ValueError(f"{schedule!r} has a field out of range: write {what}, e.g. {example!r}")
    return schedule


def check_cronjob_schedule(schedule: object) -> str:
    """A Kubernetes CronJob schedule (five fields, or a descriptor such as ``@monthly``)."""
    return _check(
        schedule,
        fields=5,
        seconds_first=False,
        example="0 4 1 * *",
        what="a CronJob schedule (minute hour day month weekday)",
    )


def check_cnpg_schedule(schedule: object) -> str:
    """A CloudNativePG ScheduledBackup schedule (six fields, seconds first, or a descriptor)."""
    return _check(
        schedule,
        fields=6,
        seconds_first=True,
        example="0 0 2 * * *",
        what="a CloudNativePG schedule (seconds first: second minute hour day month weekday)",
    )


def check_cronjob_spec(
    *,
    schedule: str,
    labels: Mapping[str, str],
    deadline_seconds: int,
    template: Mapping[str, Any],
) -> dict[str, Any]:
    """CronJob ``spec`` of a scheduled check whose failure an alert reads (the restore check,
    the advisor): one run at a time, no retry (a failed check is not transient), the last
    three successful and failed Jobs kept so kube-state-metrics and the logs still see them."""
    return {
        "schedule": schedule,
        "timeZone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": dict(labels)},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": deadline_seconds,
                "template": dict(template),
            },
        },
    }
