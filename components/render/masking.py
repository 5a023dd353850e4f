"""Data masking rules: parsed from the stack config, rendered into ``094_masking.sql``.

The config maps ``schema.table.column`` to ``{API role: function}``; the functions are the
immutable SQL of ``db/080_masking.sql`` (``platform.mask_partial``, ``platform.mask_hash``). The
rendered file makes ``platform.masking_rule`` exactly the stack's rules and calls
``platform.apply_masking()``, which builds the masking views (docs/masking.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

MASKING_FILE: Final = "094_masking.sql"
# The schema a masked table moves to: "<schema>" + this suffix (db/080_masking.sql).
PRIVATE_SUFFIX: Final = "_private"
# Suffix of the primary-key view next to the table (db/080_masking.sql).
ROWS_SUFFIX: Final = "_rows"
FUNCTIONS: Final = ('partial(prefix,"padding",suffix)', "hash")

_NAME = r"[a-z_][a-z0-9_]*"
_COLUMN_KEY = re.compile(rf"^({_NAME})\.({_NAME})\.({_NAME})$")
_PARTIAL = re.compile(r'^partial\(\s*(\d{1,4})\s*,\s*"([^"\\]{0,64})"\s*,\s*(\d{1,4})\s*\)$')
_MAX_IDENTIFIER: Final = 63


@dataclass(frozen=True, kw_only=True)
class MaskRule:
    """One masked column for one API role."""

    schema: str
    table: str
    column: str
    role: str
    method: Literal["partial", "hash"]
    prefix: int | None = None
    padding: str | None = None
    suffix: int | None = None


def parse_column_key(key: str) -> tuple[str, str, str]:
    """``schema.table.column`` -> its three names; ValueError saying the shape otherwise."""
    match = _COLUMN_KEY.match(key)
    if match is None:
        raise ValueError(
            "must be schema.table.column, each a lowercase SQL identifier ([a-z_][a-z0-9_]*)"
        )
    schema, table, column = match.groups()
    if len(schema) + len(PRIVATE_SUFFIX) > _MAX_IDENTIFIER:
        raise ValueError(
            f"schema name too long: {schema}{PRIVATE_SUFFIX} must fit in "
            f"{_MAX_IDENTIFIER} characters"
        )
    if len(table) + len(ROWS_SUFFIX) > _MAX_IDENTIFIER or len(column) > _MAX_IDENTIFIER:
        raise ValueError(
            f"table name too long: {table}{ROWS_SUFFIX} must fit in {_MAX_IDENTIFIER} characters"
        )
    return schema, table, column


def parse_function(
    text: str,
) -> tuple[Literal["partial", "hash"], int | None, str | None, int | None]:
    """``partial(1,"***",0)`` or ``hash`` -> (method, prefix, padding, suffix)."""
    value = text.strip()
    if value == "hash":
        return "hash", None, None, None
    match = _PARTIAL.match(value)
    if match is None:
        raise ValueError(
            f"unknown masking function; allowed: {', '.join(FUNCTIONS)} "
            '(e.g. partial(1,"***",0): first character, then ***)'
        )
    prefix, padding, suffix = match.groups()
    if not padding.isprintable():
        raise ValueError("the padding of partial() must be printable text")
    return "partial", int(prefix), padding, int(suffix)


def masking_rules(config: Mapping[str, Mapping[str, str]]) -> tuple[MaskRule, ...]:
    """The rules of a validated ``masking`` config, sorted (settings report the errors)."""
    rules = []
    for key, roles in config.items():
        schema, table, column = parse_column_key(key)
        for role, function in roles.items():
            method, prefix, padding, suffix = parse_function(function)
            rules.append(
                MaskRule(
                    schema=schema,
                    table=table,
                    column=column,
                    role=role,
                    method=method,
                    prefix=prefix,
                    padding=padding,
                    suffix=suffix,
                )
            )
    return tuple(sorted(rules, key=lambda r: (r.schema, r.table, r.column, r.role)))


def masked_columns(rules: tuple[MaskRule, ...]) -> frozenset[tuple[str, str, str]]:
    """``(schema, table, column)`` masked for at least one role."""
    return frozenset((r.schema, r.table, r.column) for r in rules)


def _literal(value: str | int | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def render_masking_sql(rules: tuple[MaskRule, ...]) -> str:
    """Idempotent SQL making ``platform.masking_rule`` the stack's rules, then applying them."""
    lines = [
        "-- Masking rules (rendered from the stack config key masking; docs/masking.md).",
        "DELETE FROM platform.masking_rule;",
    ]
    if rules:
        rows = [
            (r.schema, r.table, r.column, r.role, r.method, r.prefix, r.padding, r.suffix)
            for r in rules
        ]
        values = ",\n".join("    (" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        lines += [
            "INSERT INTO platform.masking_rule",
            "    (schema_name, table_name, column_name, role, method, prefix, padding, suffix)",
            "VALUES",
            values + ";",
        ]
    lines += [
        "-- Masking views for the tables that exist; the domain migrations' run applies the rest.",
        "SELECT platform.apply_masking();",
    ]
    return "\n".join(lines) + "\n"
