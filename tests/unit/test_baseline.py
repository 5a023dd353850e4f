"""The SQL baseline files and the rendered exposed-schemas SQL (text-level checks)."""

from __future__ import annotations

import re

import pytest

from components.inputs import GRAPHQL_AUTHENTICATOR
from components.render.access import AUTHENTICATOR
from components.render.baseline import (
    ACCESS_FILE,
    APPLY_SCRIPT,
    CACHE_CONTROL_FILE,
    EXPOSED_SCHEMAS_FILE,
    GROUP_ROLES_FILE,
    SUPERUSER_VERSION_FILE,
    TENANCY_FILE,
    CacheControl,
    GroupRoles,
    admin_sql_files,
    baseline_sql_files,
    bundle_checksum,
    is_superuser_file,
    job_bundle,
    render_apply_script,
    render_bootstrap_sql,
    render_cache_control_sql,
    render_exposed_schemas_sql,
    render_group_roles_sql,
    render_superuser_version_sql,
    stack_sql_files,
    superuser_sql_files,
    superuser_version,
)
from components.render.masking import MASKING_FILE
from components.render.migrations import MIGRATIONS_DIR

pytestmark = pytest.mark.unit

# Every login that connects through PgBouncer: PostgREST's and the GraphQL pilot's authenticator.
POOLER_LOGINS = (AUTHENTICATOR, GRAPHQL_AUTHENTICATOR)
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
    assert names == ["020_platform.sql", "025_tenancy.sql", "030_audit.sql", "040_rls_guard.sql",
                     "041_audit_ddl.sql", "045_database_reach.sql", "050_pgbouncer_auth.sql",
                     "060_pgbouncer_auth_grants.sql", "070_schema_version.sql",
                     "075_migration_ledger.sql", "080_masking.sql",
                     "081_masking_apply.sql"]  # fmt: skip
    assert all(ACCESS_FILE < name < EXPOSED_SCHEMAS_FILE for name in names)
    assert [name for name, _ in stack_sql_files(["content"])] == [
        *names,
        SUPERUSER_VERSION_FILE,
        EXPOSED_SCHEMAS_FILE,
        GROUP_ROLES_FILE,
        CACHE_CONTROL_FILE,
        TENANCY_FILE,
        MASKING_FILE,
    ]


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
        "platform.schema_version",
    } <= names


def test_security_definer_functions_pin_search_path() -> None:
    definers = [(f, n, h) for f, n, _, h in functions() if "SECURITY DEFINER" in h]
    assert {n for _, n, _ in definers} == {
        "audit.record",
        "audit.record_ddl",
        "platform.audit_ddl",
        "platform.enforce_rls",
        "platform.rls_guard",
        "platform.pgbouncer_get_auth",
    }


def test_every_platform_function_pins_an_empty_search_path() -> None:
    """Nothing a caller adds to its search_path, now or later, changes what they resolve."""
    found = functions()
    assert found
    for file, name, _, head in found:
        assert "SET search_path = ''" in head, f"{file}: {name}"


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
    texts += [path.read_text() for path in MIGRATIONS_DIR.glob("*/*.sql")]
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


# -- superuser part and the baseline Job -----------------------------------------------------------
_SUPERUSER_ONLY = re.compile(r"CREATE EVENT TRIGGER|pg_authid|SECURITY DEFINER", re.IGNORECASE)


def _code(text: str) -> str:
    """``text`` without its comment lines (the files explain themselves in comments)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def test_superuser_statements_live_only_in_marked_files() -> None:
    """Everything a non-superuser admin cannot run is in a file the Job does not run as admin."""
    marked = {name for name, text in baseline_sql_files() if is_superuser_file(text)}
    assert marked == {
        "040_rls_guard.sql",
        "041_audit_ddl.sql",
        "045_database_reach.sql",
        "050_pgbouncer_auth.sql",
    }
    for name, text in admin_sql_files(["content"]):
        # audit.record() is SECURITY DEFINER too, but owned by the admin, who owns audit.log.
        found = set(_SUPERUSER_ONLY.findall(_code(text)))
        assert found <= ({"SECURITY DEFINER"} if name == "030_audit.sql" else set()), name


def test_superuser_part_names_no_role_of_the_access_plan() -> None:
    """It runs at bootstrap, before the plan's roles exist (the lookup's allowlist is names)."""
    text = _code(render_bootstrap_sql()).replace(_POOLER_ALLOWLIST, "")
    for role in ("pgbouncer_auth", "pgplatform_owner", "postgrest", "api_user", "api_anonymous"):
        assert role not in text, role


_POOLER_ALLOWLIST = "ARRAY['postgraphile', 'postgrest']::pg_catalog.name[]"


def test_pooler_lookup_serves_exactly_the_authenticators() -> None:
    """The auth_query allowlist is every login that connects through PgBouncer, nothing else."""
    [lookup] = [text for name, text in baseline_sql_files() if name == "050_pgbouncer_auth.sql"]
    allowlist = f"ARRAY[{', '.join(repr(n) for n in sorted(POOLER_LOGINS))}]::pg_catalog.name[]"
    assert allowlist == _POOLER_ALLOWLIST
    assert f"a.rolname = ANY ({allowlist})" in lookup


def test_version_marker_tracks_the_superuser_files() -> None:
    version = superuser_version()
    assert re.fullmatch(r"[0-9a-f]{64}", version)
    assert superuser_sql_files()[-1] == (
        SUPERUSER_VERSION_FILE,
        render_superuser_version_sql(version),
    )
    assert f"'{version}'::text" in render_bootstrap_sql()
    with pytest.raises(ValueError, match="sha256"):
        render_superuser_version_sql("x'; DROP TABLE audit.log; --")


def test_apply_script_includes_every_file_once_in_one_transaction() -> None:
    script = render_apply_script(["identity", "content"])
    included = re.findall(r"^\\ir (\S+)$", script, re.MULTILINE)
    expected = [name for name, _ in superuser_sql_files()]
    expected += [name for name, _ in admin_sql_files(["content"])]
    assert included == expected
    assert script.index("BEGIN;") < script.index("\\ir") < script.rindex("COMMIT;")
    assert script.count("BEGIN;") == 1
    assert "\\set ON_ERROR_STOP on" in script.splitlines()[1]
    assert superuser_version() in script


def test_job_bundle_and_checksum() -> None:
    bundle = job_bundle(["identity", "content"])
    assert list(bundle) == sorted(bundle)
    assert set(bundle) == {APPLY_SCRIPT, *(n for n, _ in stack_sql_files(["content"]))}
    assert "('identity')" in bundle[EXPOSED_SCHEMAS_FILE]
    assert bundle_checksum(bundle) == bundle_checksum(dict(reversed(list(bundle.items()))))
    assert bundle_checksum(bundle) != bundle_checksum(job_bundle(["identity"]))


def test_group_roles_render_the_mapping_and_the_base_role() -> None:
    groups = GroupRoles(
        base_role="api_user",
        mapping=(("o'hara team", "api_editor", 20), ("admins", "api_admin", 30)),
    )
    text = render_group_roles_sql(groups)
    assert "('admins', 'api_admin', 30),\n    ('o''hara team', 'api_editor', 20);" in text
    assert "INSERT INTO platform.group_base_role (role) VALUES\n    ('api_user');" in text
    assert text.index("DELETE FROM platform.group_role;") < text.index("INSERT")
    empty = render_group_roles_sql(GroupRoles())
    assert "INSERT" not in empty
    assert "DELETE FROM platform.group_role;" in empty
    assert "DELETE FROM platform.group_base_role;" in empty
    bundle = job_bundle(["content"], groups)
    assert bundle[GROUP_ROLES_FILE] == text
    assert bundle_checksum(bundle) != bundle_checksum(job_bundle(["content"]))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"mapping": (("g", "api_user", 1),)}, "base_role: required"),
        ({"base_role": "postgres"}, "not an API role"),
        ({"base_role": "api_user", "mapping": (("g", "pgplatform_owner", 1),)}, "maps to"),
        ({"base_role": "api_user", "mapping": (("g", "api_anonymous", 1),)}, "maps to"),
        ({"base_role": "api_user", "mapping": (("", "api_user", 1),)}, "empty"),
        (
            {"base_role": "api_user", "mapping": (("g", "api_user", 1), ("g", "api_admin", 2))},
            "more than once",
        ),
    ],
)
def test_group_roles_refuse_what_pre_request_would_refuse(
    groups: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GroupRoles(**groups)  # type: ignore[arg-type]


def test_cache_control_renders_rows_and_refuses_public_for_tokens() -> None:
    cache = CacheControl(
        rows=(
            ("content", "api_anonymous", "public, max-age=60"),
            ("content", "api_user", "no-store"),
        )
    )
    text = render_cache_control_sql(cache)
    assert (
        "('content', 'api_anonymous', 'public, max-age=60'),\n"
        "    ('content', 'api_user', 'no-store');" in text
    )
    assert "INSERT" not in render_cache_control_sql(CacheControl())
    assert job_bundle(["content"], cache=cache)[CACHE_CONTROL_FILE] == text
    with pytest.raises(ValueError, match="must not be cached publicly"):
        CacheControl(rows=(("content", "api_user", "public, max-age=5"),))
    with pytest.raises(ValueError, match="not an API role"):
        CacheControl(rows=(("content", "postgres", "no-store"),))
    with pytest.raises(ValueError, match="more than once"):
        CacheControl(rows=(("c", "api_user", "no-store"), ("c", "api_user", "private")))
