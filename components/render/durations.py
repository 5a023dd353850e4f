"""The one duration syntax of the stack config, and its conversions.

Every duration a user writes (statement timeouts, Vault refresh interval, backup retention) uses
Go's notation, which Kubernetes objects take verbatim: a sequence of ``<integer><unit>`` with the
units ``ms``, ``s``, ``m`` (minutes), ``h``, plus ``d`` and ``w`` for the lengths Go has no unit
for (``500ms``, ``30s``, ``15m``, ``1h30m``, ``30d``, ``4w``). Consumers get what they need:
milliseconds for PostgreSQL, a Go duration for External Secrets, days for CloudNativePG.
"""

from __future__ import annotations

import re
from typing import Final

UNIT_SECONDS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86_400.0,
    "w": 604_800.0,
}
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w))+")
EXAMPLES: Final = "'500ms', '30s', '15m', '1h30m', '7d'"


def parse_duration(value: object) -> float:
    """Seconds of ``value``; the error says how to write it (``2min`` is ``2m``)."""
    if not isinstance(value, str) or not _WHOLE.fullmatch(value):
        hint = ""
        if isinstance(value, str) and re.search(r"[0-9]\s*min", value):
            hint = "; minutes are written 'm' (e.g. '2m', not '2min')"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            hint = f"; add the unit, e.g. '{value:g}s'"
        raise ValueError(
            f"{value!r} is not a duration: use whole numbers with the units ms, s, m, h, d, w, "
            f"e.g. {EXAMPLES}{hint}"
        )
    seconds = sum(int(number) * UNIT_SECONDS[unit] for number, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"{value!r} is zero: a duration must be positive")
    return seconds


def duration_ms(value: str) -> int:
    """Milliseconds (PostgreSQL's ``statement_timeout``)."""
    return round(parse_duration(value) * 1000)


def go_duration(value: str) -> str:
    """The same length in Go's ``time.ParseDuration`` units (``1d`` -> ``24h``)."""
    millis = duration_ms(value)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    parts = [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def whole_days(value: str) -> int:
    """Whole days of ``value``; raises when it is not a multiple of a day."""
    seconds = parse_duration(value)
    days, rest = divmod(seconds, UNIT_SECONDS["d"])
    if rest or days < 1:
        raise ValueError(f"{value!r} is not a whole number of days: use e.g. '30d' or '4w'")
    return int(days)
