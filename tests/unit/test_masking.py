"""Masking rules: the config key's validation and the rendered ``094_masking.sql``."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.render.baseline import job_bundle
from components.render.masking import (
    MASKING_FILE,
    MaskRule,
    masking_rules,
    parse_function,
    render_masking_sql,
)
from components.settings import SettingsError, parse_settings

pytestmark = pytest.mark.unit

_STAGING: dict[str, Any] = {
    "publicBaseUrl": "https://api.staging.example.com",
    "auth": {"audience": "pgplatform-staging", "anonymous": True},
    "domains": {"identity": {}, "content": {}},
    "services": [{"name": "cms", "schemas": ["content"], "access": "write"}],
}
_PROD: dict[str, Any] = {
    "publicBaseUrl": "https://api.example.com",
    "auth": {"audience": "pgplatform", "jwksUrl": "https://id.example.com/jwks.json"},
    "domains": {"identity": {}, "content": {}},
    "backup": {"destinationPath": "s3://backups/pg", "credentialsSecret": "backup-s3"},
}


def _masking(base: dict[str, Any], masking: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    raw["masking"] = masking
    return raw


def _problems(stack: str, raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw)
    return [str(p) for p in caught.value.problems]


def test_the_spec_example_is_valid_and_becomes_rules() -> None:
    masking = {
        "identity.accounts.email": {"api_user": 'partial(1,"***",0)', "api_service_cms": "hash"}
    }
    settings = parse_settings("staging", _masking(_STAGING, masking))
    assert masking_rules(settings.masking) == (
        MaskRule(schema="identity", table="accounts", column="email", role="api_service_cms",
                 method="hash"),
        MaskRule(schema="identity", table="accounts", column="email", role="api_user",
                 method="partial", prefix=1, padding="***", suffix=0),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stack", "masking", "key", "hint"),
    [
        ("staging", {"identity.accounts": {"api_user": "hash"}}, "masking.identity.accounts",
         "must be schema.table.column"),
        ("staging", {"Identity.accounts.email": {"api_user": "hash"}},
         "masking.Identity.accounts.email", "lowercase SQL identifier"),
        ("staging", {"billing.invoices.iban": {"api_user": "hash"}},
         "masking.billing.invoices.iban", "not served by a domain"),
        ("staging", {"identity.accounts.email": {"api_nobody": "hash"}},
         "masking.identity.accounts.email.api_nobody", "not an API role of this stack"),
        ("staging", {"identity.accounts.email": {"postgrest": "hash"}},
         "masking.identity.accounts.email.postgrest", "not an API role of this stack"),
        ("prod", {"identity.accounts.email": {"api_anonymous": "hash"}},
         "masking.identity.accounts.email.api_anonymous", "not an API role of this stack"),
        ("staging", {"identity.accounts.email": {"api_user": "md5"}},
         "masking.identity.accounts.email.api_user", "unknown masking function; allowed"),
        ("staging", {"identity.accounts.email": {"api_user": "partial(1,'***',0)"}},
         "masking.identity.accounts.email.api_user", 'partial(prefix,"padding",suffix)'),
        ("staging", {"identity.accounts.email": {"api_user": "partial(-1,\"*\",0)"}},
         "masking.identity.accounts.email.api_user", "unknown masking function"),
        ("staging", {"identity.accounts.email": {}}, "masking.identity.accounts.email",
         "name at least one role"),
        ("staging", {f"identity.{'t' * 60}.email": {"api_user": "hash"}},
         f"masking.identity.{'t' * 60}.email", "table name too long"),
    ],
)  # fmt: skip
def test_masking_errors_name_their_key(stack: str, masking: Any, key: str, hint: str) -> None:
    base = _STAGING if stack == "staging" else _PROD
    problems = _problems(stack, _masking(base, masking))
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in problems), problems


def test_the_private_schema_of_a_masked_table_is_no_domain() -> None:
    raw = _masking(_STAGING, {"identity.accounts.email": {"api_user": "hash"}})
    raw["domains"]["identity_private"] = {}
    problems = _problems("staging", raw)
    assert any("identity_private is where masked tables of identity move" in p for p in problems)


def test_masking_must_be_a_map_of_maps() -> None:
    problems = _problems("staging", _masking(_STAGING, {"identity.accounts.email": "hash"}))
    assert any(p.startswith("pgplatform:masking.identity.accounts.email") for p in problems)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("hash", ("hash", None, None, None)),
        ('partial(1,"***",0)', ("partial", 1, "***", 0)),
        (' partial( 2 , "-x-" , 3 ) ', ("partial", 2, "-x-", 3)),
        ('partial(0,"",4)', ("partial", 0, "", 4)),
    ],
)
def test_functions_parse(text: str, parsed: tuple[Any, ...]) -> None:
    assert parse_function(text) == parsed


def test_rendered_rules_replace_the_table_and_apply() -> None:
    rules = masking_rules(
        {"identity.accounts.email": {"api_user": 'partial(1,"it\'s",0)', "api_editor": "hash"}}
    )
    assert render_masking_sql(rules) == (
        "-- Masking rules (rendered from the stack config key masking; docs/masking.md).\n"
        "DELETE FROM platform.masking_rule;\n"
        "INSERT INTO platform.masking_rule\n"
        "    (schema_name, table_name, column_name, role, method, prefix, padding, suffix)\n"
        "VALUES\n"
        "    ('identity', 'accounts', 'email', 'api_editor', 'hash', NULL, NULL, NULL),\n"
        "    ('identity', 'accounts', 'email', 'api_user', 'partial', 1, 'it''s', 0);\n"
        "-- Masking views for the tables that exist; the domain migrations' run applies the rest.\n"
        "SELECT platform.apply_masking();\n"
    )


def test_no_rules_still_unmask_what_was_masked() -> None:
    """An emptied config must undo the views: the file always runs apply_masking()."""
    text = render_masking_sql(())
    assert "DELETE FROM platform.masking_rule;" in text
    assert "INSERT" not in text
    assert text.rstrip().endswith("SELECT platform.apply_masking();")


def test_the_rules_are_part_of_the_job_bundle() -> None:
    rules = masking_rules({"identity.accounts.email": {"api_user": "hash"}})
    plain = job_bundle(["identity"])
    masked = job_bundle(["identity"], masking=rules)
    assert masked[MASKING_FILE] == render_masking_sql(rules)
    assert plain[MASKING_FILE] != masked[MASKING_FILE]
    assert "\\ir 094_masking.sql" in masked["apply.psql"]


def _staging_committed() -> dict[str, Any]:
    from components.settings import decode_config_value
    from tests.conftest import stack_config

    config, _ = stack_config("staging")
    return {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}


def test_a_masked_column_is_never_published() -> None:
    """CDC carries raw values to the analytics database: settings refuse a masked column there."""
    raw = _staging_committed()
    raw["cdc"]["tables"]["identity.accounts"]["columns"]["email"] = "text"
    problems = _problems("staging", raw)
    key = "pgplatform:cdc.tables.identity.accounts.columns.email"
    assert any(p.startswith(key) and "masking.identity.accounts.email" in p for p in problems), (
        problems
    )


def test_a_masked_table_is_published_from_where_it_lives() -> None:
    """The committed staging stack publishes identity.accounts (id, created_at) and masks its
    email: the publication names identity_private.accounts, errors still name the config key."""
    from components.cdc_pipeline import cdc_plan
    from components.render import cdc

    plan = cdc_plan(parse_settings("staging", _staging_committed()))
    assert plan is not None
    [accounts] = [t for t in plan.tables if t.name == "accounts"]
    assert (accounts.qualified, accounts.config_name) == (
        "identity_private.accounts",
        "identity.accounts",
    )
    publisher = cdc.render_publisher_psql(plan)
    assert "TABLE identity_private.accounts (created_at, id)" in publisher
    assert "pgplatform:cdc.tables.identity.accounts:" in publisher
    assert "CREATE TABLE IF NOT EXISTS identity_private.accounts (" in (
        cdc.render_subscriber_sql(plan)
    )
