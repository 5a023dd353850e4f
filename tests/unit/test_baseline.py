"""The SQL baseline files and the rendered exposed-schemas SQL (text-level checks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.render.baseline import (
    ACCESS_FILE,
    EXPOSED_SCHEMAS_FILE,
    baseline_sql_files,
    render_exposed_schemas_sql,
    stack_sql_files,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION (?P<name>[\w.]+)\((?P<args>[^)]*)\)(?P<head>.*?)\bAS \$\$",
    re.DOTALL,
)


def functions() -> list[tuple[str, str, str, str]]:
    """(file, name, argument types, header between the signature and the body) per function."""
    found = []
    for file, text in baseline_sql_files():
        for match in _FUNCTION.finditer(text):
            args = ", ".join(part.split()[-1] for part in match["args"].split(",") if part.strip())
            found.append((file, match["name"], args, match["head"]))
    return found


def test_files_in_order_between_access_and_exposed_schemas() -> None:
    names = [name for name, _ in baseline_sql_files()]
    assert names == ["020_platform.sql", "030_audit.sql", "040_rls_guard.sql",
                     "050_pgbouncer_auth.sql"]  # fmt: skip
    assert all(ACCESS_FILE < name < EXPOSED_SCHEMAS_FILE for name in names)
    assert [name for name, _ in stack_sql_files(["content"])] == [*names, EXPOSED_SCHEMAS_FILE]


def test_fixed_function_names_exist() -> None:
    names = {name for _, name, _, _ in functions()}
    assert {
        "platform.jwt_claims",
        "platform.jwt_sub",
        "platform.jwt_role",
        "platform.pre_request",
        "platform.enable_audit",
        "audit.record",
        "platform.rls_guard",
        "platform.pgbouncer_get_auth",
    } <= names


def test_security_definer_functions_pin_search_path() -> None:
    definers = [(f, n, h) for f, n, _, h in functions() if "SECURITY DEFINER" in h]
    assert {n for _, n, _ in definers} == {
        "audit.record",
        "platform.rls_guard",
        "platform.pgbouncer_get_auth",
    }
    for file, name, head in definers:
        assert "SET search_path = pg_catalog, pg_temp" in head, f"{file}: {name}"


def test_no_function_is_left_executable_by_public() -> None:
    text = "\n".join(body for _, body in baseline_sql_files())
    for file, name, args, _ in functions():
        revoke = re.compile(
            rf"REVOKE ALL ON FUNCTION[^;]*\b{re.escape(name)}\({re.escape(args)}\)[^;]*FROM PUBLIC;"
        )
        assert revoke.search(text), f"{file}: {name}({args}) keeps EXECUTE for PUBLIC"


def test_claims_are_read_from_the_single_claims_setting() -> None:
    """request.jwt.claim.<name> (one GUC per claim) is gone from PostgREST: never use it."""
    texts = [body for _, body in baseline_sql_files()]
    texts += [path.read_text() for path in FIXTURES.glob("*.sql")]
    assert texts
    for text in texts:
        assert "request.jwt.claim." not in text
    assert "current_setting('request.jwt.claims', true)" in baseline_sql_files()[0][1]


def test_exposed_schemas_golden() -> None:
    assert render_exposed_schemas_sql(["identity", "content"]) == (
        "-- Schemas served by an API in this stack (rendered from the stack config).\n"
        "INSERT INTO platform.exposed_schema (name) VALUES\n"
        "    ('content'),\n"
        "    ('identity')\n"
        "ON CONFLICT (name) DO NOTHING;\n"
        "\n"
        "DELETE FROM platform.exposed_schema\n"
        "WHERE name <> ALL (ARRAY['content', 'identity']::name[]);\n"
        "\n"
        "-- Tables created before the RLS guard existed: ENABLE + FORCE ROW LEVEL SECURITY.\n"
        "SELECT platform.enforce_rls(c.oid::regclass)\n"
        "FROM pg_catalog.pg_class c\n"
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n"
        "JOIN platform.exposed_schema e ON e.name = n.nspname\n"
        "WHERE c.relkind IN ('r', 'p');\n"
    )


def test_no_exposed_schemas_clears_the_registry() -> None:
    sql = render_exposed_schemas_sql([])
    assert "DELETE FROM platform.exposed_schema;" in sql
    assert "INSERT" not in sql


@pytest.mark.parametrize(
    ("schemas", "message"),
    [
        (["Content"], "not a lowercase SQL identifier"),
        (["content; DROP TABLE audit.log"], "not a lowercase SQL identifier"),
        (["x" * 64], "not a lowercase SQL identifier"),
        (["audit"], "internal"),
        (["platform"], "internal"),
        (["public"], "internal"),
        (["pg_catalog"], "internal"),
        (["content", "content"], "more than once"),
    ],
)
def test_exposed_schemas_are_validated(schemas: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=rf"^schemas: .*{message}"):
        render_exposed_schemas_sql(schemas)
