"""PromQL text fragments every rule builder writes the same way."""

from __future__ import annotations


def number(value: float) -> str:
    """A PromQL number literal: integral floats without a trailing ``.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def percent(value: float) -> str:
    """A share as a percentage for alert text (0.05 -> ``5%``)."""
    return f"{number(value * 100)}%"
