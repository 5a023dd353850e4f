"""The copy database's bundle: what it grants, what it leaves out, and the errors of bad input."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from components import inputs
from components.render import copy_database as cd
from components.render.access import (
    AUTHENTICATOR,
    OWNER,
    AccessInput,
    build_access_plan,
    render_access_sql,
)
from components.render.baseline import (
    ACCESS_FILE,
    APPLY_SCRIPT,
    EXPOSED_SCHEMAS_FILE,
    CacheControl,
    Tenancy,
    admin_sql_files,
    bundle_checksum,
)
from components.render.membership_loan import MembershipLoan
from components.render.migrations import job_bundle as migrations_bundle
from components.render.migrations import plan_migrations, render_migrate_script
from tests.conftest import stack_settings

pytestmark = pytest.mark.unit

PLAN = inputs.access_plan(stack_settings("staging"))
COPIES = (("content", "articles"), ("identity_private", "accounts"))


def copy_db(**changes: Any) -> cd.CopyDatabase:
    fields: dict[str, Any] = {
        "database": "analytics",
        "schemas": ("analytics",),
        "copies": COPIES,
        "authenticators": (AUTHENTICATOR,),
        "access": PLAN,
    }
    return cd.CopyDatabase(**(fields | changes))


def test_readers_are_the_api_roles_reaching_a_served_schema() -> None:
    # The machine clients of staging reach content or billing only.
    assert copy_db().readers == ("api_anonymous", "api_user", "api_editor", "api_admin")


def test_the_subset_plan_creates_no_role_and_grants_no_membership() -> None:
    subset = cd.subset_plan(copy_db())
    assert subset.roles == ()
    assert subset.memberships == ()
    sql = render_access_sql(subset, "analytics")
    assert "CREATE ROLE" not in sql
    assert "ALTER ROLE" not in sql
    assert not re.search(r"^GRANT \"api_\w+\" TO", sql, re.MULTILINE)


def test_only_the_authenticators_may_connect() -> None:
    sql = render_access_sql(cd.subset_plan(copy_db()), "analytics")
    connects = re.findall(r"^GRANT CONNECT ON DATABASE \"analytics\" TO \"(\w+)\";", sql, re.M)
    assert connects == [AUTHENTICATOR]
    for other in ("postgraphile", "pgbouncer_auth"):
        assert f'REVOKE ALL ON DATABASE "analytics" FROM "{other}";' in sql
    assert 'REVOKE ALL ON DATABASE "analytics" FROM PUBLIC;' in sql


def test_the_subset_plan_names_only_the_served_and_platform_schemas() -> None:
    subset = cd.subset_plan(copy_db())
    assert {(s.name, s.owner) for s in subset.schemas} == {
        ("analytics", OWNER),
        ("platform", None),
        ("audit", None),
    }
    assert {g.schema for g in subset.schema_grants} == {"analytics", "platform", "public"}
    assert {g.role for g in subset.schema_grants if g.schema == "platform"} == set(
        copy_db().readers
    )
    assert {o.schema for o in subset.object_grants} == {"analytics"}
    assert {d.schema for d in subset.default_grants} <= {None, "analytics"}
    assert {d.role for d in subset.default_grants} == {*copy_db().readers, "public"}


def test_files_needing_the_superuser_part_are_left_out_with_their_reason() -> None:
    dependent = cd.superuser_dependent_files(copy_db())
    assert dependent == {
        "060_pgbouncer_auth_grants.sql": ("platform.pgbouncer_get_auth",),
        EXPOSED_SCHEMAS_FILE: ("platform.enforce_rls", "platform.exposed_schema"),
    }
    names = [name for name, _ in cd.copy_sql_files(copy_db())]
    every = [name for name, _ in admin_sql_files(("analytics",))]
    assert names == [n for n in every if n not in dependent]
    # What the migrations runner needs there: its ledger and the masking functions.
    assert {"075_migration_ledger.sql", "080_masking.sql", "081_masking_apply.sql"} <= set(names)
    assert "094_masking.sql" in names


def test_a_reference_in_a_comment_does_not_exclude_a_file() -> None:
    # db/030_audit.sql mentions platform.audit_ddl() (superuser-made) in a comment only.
    assert "platform.audit_ddl" in cd.superuser_objects()
    assert "030_audit.sql" in [name for name, _ in cd.copy_sql_files(copy_db())]


def test_the_script_applies_every_file_of_the_bundle_in_one_transaction() -> None:
    bundle = cd.job_bundle(copy_db())
    script = bundle[APPLY_SCRIPT]
    included = re.findall(r"^\\ir (\S+)$", script, re.MULTILINE)
    assert included[0] == ACCESS_FILE
    assert included[-1] == cd.COPY_GRANTS_FILE
    assert set(bundle) == {*included, APPLY_SCRIPT, cd.SEAL_FILE}
    assert script.count("BEGIN;") == 1
    assert script.count("COMMIT;") == 1
    assert script.index("BEGIN;") < script.index("\\ir ") < script.index("COMMIT;")
    assert "\\set ON_ERROR_STOP on" in script
    assert "SET LOCAL lock_timeout = '10s';" in script


def test_the_owner_membership_is_lent_for_the_transaction_only() -> None:
    loan = MembershipLoan(role=OWNER)
    for text in (cd.render_apply_script(copy_db()), cd.render_seal_sql(copy_db())):
        grant = text.index("\n".join(loan.grant()))
        revoke = text.index("\n".join(loan.revoke()))
        assert text.index("BEGIN;") < grant < revoke < text.index("COMMIT;")


def test_copy_grants_are_usage_and_select_only() -> None:
    sql = cd.render_copy_grants_sql(copy_db())
    grants = re.findall(r"^GRANT (.+?) ON (.+?) TO (.+);$", sql, re.MULTILINE)
    readers = ", ".join(copy_db().readers)
    assert grants == [
        ("USAGE", "SCHEMA content", f"{readers}, {OWNER}"),
        ("USAGE", "SCHEMA identity_private", f"{readers}, {OWNER}"),
        ("SELECT", "content.articles", readers),
        ("SELECT", "identity_private.accounts", readers),
    ]
    assert "'REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I'" in sql


def test_the_seal_covers_tables_and_partitioned_tables_of_the_served_schemas() -> None:
    seal = cd.render_seal_sql(copy_db(schemas=("analytics",)))
    assert "ARRAY['analytics']::name[]" in seal
    assert "c.relkind IN ('r', 'p')" in seal
    assert "ENABLE ROW LEVEL SECURITY, '" in seal
    assert "FORCE ROW LEVEL SECURITY', target" in seal
    assert "NOT (c.relrowsecurity AND c.relforcerowsecurity)" in seal


def test_the_checksum_follows_the_copies_and_the_readers() -> None:
    base = bundle_checksum(cd.job_bundle(copy_db()))
    assert bundle_checksum(cd.job_bundle(copy_db())) == base
    fewer = copy_db(copies=(("content", "articles"),))
    assert bundle_checksum(cd.job_bundle(fewer)) != base
    no_anonymous = build_access_plan(
        dataclasses.replace(inputs.access_input(stack_settings("staging")), anonymous=False)
    )
    narrower = copy_db(access=no_anonymous)
    assert "api_anonymous" not in narrower.readers
    assert bundle_checksum(cd.job_bundle(narrower)) != base


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"database": "Analytics"}, "database: not a database name"),
        ({"schemas": ()}, "schemas: at least one"),
        ({"schemas": ("platform",)}, "schemas: 'platform' is not a domain schema"),
        ({"schemas": ("reports",)}, "schemas: 'reports' is not an exposed schema"),
        ({"schemas": ("analytics", "analytics")}, "schemas: listed more than once"),
        ({"copies": ()}, "copies: at least one"),
        ({"copies": (("analytics", "articles"),)}, "copies: analytics.articles is in a served"),
        ({"copies": (("audit", "log"),)}, "copies: audit.log is in an internal schema"),
        ({"copies": (("content", "Articles"),)}, "copies: 'content'.'Articles' is not"),
        ({"copies": COPIES + COPIES[:1]}, "copies: a table is listed more than once"),
        ({"authenticators": ()}, "authenticators: at least one"),
        ({"authenticators": ("pgbouncer_auth",)}, "authenticators: 'pgbouncer_auth' is not"),
        (
            {"cache": CacheControl(rows=(("content", "api_user", "private, max-age=5"),))},
            "cache: rows for schemas not served here: ['content']",
        ),
        (
            {"tenancy": Tenancy(domains=(("billing", "tenant_id", True),))},
            "tenancy: domains not served here: ['billing']",
        ),
    ],
)
def test_bad_input_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        copy_db(**changes)


def test_a_schema_no_api_role_reaches_is_refused() -> None:
    plan = build_access_plan(
        AccessInput(
            schemas=("analytics",),
            anonymous=False,
            timeouts_ms={"anonymous": 1, "user": 1, "editor": 1, "admin": 1},
        )
    )
    bare = dataclasses.replace(plan, schema_grants=())
    with pytest.raises(ValueError, match="access: no API role reaches"):
        copy_db(access=bare)


def test_the_migrations_runner_seals_inside_each_migrations_transaction() -> None:
    plan = plan_migrations(("analytics", "content"), only={"analytics"})
    seal = cd.seal_statements(copy_db())
    script = render_migrate_script(plan, after_each=seal)
    assert render_migrate_script(plan) == script.replace("\n".join(seal) + "\n", "")
    for migration in plan.migrations:
        start = script.index(f"\\ir {migration.key}")
        sealed = script.index("\n".join(seal), start)
        assert start < sealed < script.index("INSERT INTO platform.migration", start)
        assert sealed < script.index("COMMIT;", start)
    assert migrations_bundle(plan, after_each=seal)["migrate.psql"] == script
