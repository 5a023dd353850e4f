"""The platform SQL baseline (``db/``) and the per-stack SQL that goes with it.

The baseline files are the same for every stack; what differs is which schemas an API exposes,
so that list is rendered into one small, idempotent file that registers them for the RLS guard
(``db/040_rls_guard.sql``) and secures tables that existed before the guard did.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

DB_DIR: Final = Path(__file__).resolve().parents[2] / "db"
# Every baseline file runs after the rendered access file, which creates roles and schemas.
ACCESS_FILE: Final = "010_access.sql"
EXPOSED_SCHEMAS_FILE: Final = "090_exposed_schemas.sql"

_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Schemas an API must never serve: PostgreSQL's own and the platform's internals.
_NEVER_EXPOSED: Final = frozenset({"public", "audit", "platform", "information_schema"})


def baseline_sql_files() -> list[tuple[str, str]]:
    """``(file name, text)`` of ``db/*.sql`` in the order they must be applied."""
    files = []
    for path in sorted(DB_DIR.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None or path.name <= ACCESS_FILE or path.name >= EXPOSED_SCHEMAS_FILE:
            raise ValueError(
                f"db/{path.name}: baseline files are named NNN_name.sql and sort between "
                f"{ACCESS_FILE} and {EXPOSED_SCHEMAS_FILE}"
            )
        files.append((path.name, path.read_text(encoding="utf-8")))
    return files


def render_exposed_schemas_sql(schemas: Sequence[str]) -> str:
    """Idempotent SQL making ``schemas`` exactly the exposed set and securing their tables.

    Registry rows of schemas no longer listed are removed (their tables keep RLS: switching it
    off is never automatic). Pre-existing tables are secured with ``platform.enforce_rls``, the
    same function the event trigger uses, so there is one definition of "secured".
    """
    names = list(schemas)
    for name in names:
        if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
            raise ValueError(
                f"schemas: {name!r} is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, <= 63)"
            )
        if name in _NEVER_EXPOSED or name.startswith("pg_"):
            raise ValueError(f"schemas: {name!r} is internal and can never be exposed by an API")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"schemas: listed more than once: {duplicates}")
    ordered = sorted(names)
    keep = ", ".join(f"'{name}'" for name in ordered)
    lines = ["-- Schemas served by an API in this stack (rendered from the stack config)."]
    if ordered:
        values = ",\n".join(f"    ('{name}')" for name in ordered)
        lines += [
            "INSERT INTO platform.exposed_schema (name) VALUES",
            values,
            "ON CONFLICT (name) DO NOTHING;",
            "",
            "DELETE FROM platform.exposed_schema",
            f"WHERE name <> ALL (ARRAY[{keep}]::name[]);",
        ]
    else:
        lines += ["DELETE FROM platform.exposed_schema;"]
    lines += [
        "",
        "-- Tables created before the RLS guard existed: ENABLE + FORCE ROW LEVEL SECURITY.",
        "SELECT platform.enforce_rls(c.oid::regclass)",
        "FROM pg_catalog.pg_class c",
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
        "JOIN platform.exposed_schema e ON e.name = n.nspname",
        "WHERE c.relkind IN ('r', 'p');",
    ]
    return "\n".join(lines) + "\n"


def stack_sql_files(exposed_schemas: Sequence[str]) -> list[tuple[str, str]]:
    """The baseline followed by the exposed-schemas file: everything after ``010_access.sql``."""
    return [
        *baseline_sql_files(),
        (EXPOSED_SCHEMAS_FILE, render_exposed_schemas_sql(exposed_schemas)),
    ]
