"""Tenancy config: domains.<name>.tenancy and tenant-bound machine clients, from the stack
settings to the rendered 093_tenancy.sql; every bad input names its key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components import inputs
from components.render.baseline import (
    TENANCY_FILE,
    Tenancy,
    job_bundle,
    render_tenancy_sql,
)
from components.settings import parse_settings
from tests.conftest import stack_settings
from tests.unit.test_settings import _STAGING, _problems

pytestmark = pytest.mark.unit

_TENANTED: dict[str, Any] = copy.deepcopy(_STAGING)
_TENANTED["domains"]["billing"] = {"tenancy": {"claim": "tenant_id"}}
_TENANTED["services"] += [
    {"name": "ingest", "schemas": ["billing"], "access": "write", "tenant": "acme"},
    {"name": "support", "schemas": ["billing"], "crossTenant": True},
]


def test_tenancy_reaches_the_sql_baseline() -> None:
    settings = parse_settings("staging", _TENANTED)
    assert settings.domains["billing"].tenancy is not None
    assert settings.domains["billing"].tenancy.required is True, "required unless said otherwise"
    assert settings.domains["content"].tenancy is None
    tenancy = inputs.tenancy(settings)
    assert tenancy == Tenancy(
        domains=(("billing", "tenant_id", True),),
        clients=(("api_service_ingest", "acme"), ("api_service_support", None)),
    )
    assert render_tenancy_sql(tenancy).splitlines()[2:] == [
        "DELETE FROM platform.tenancy;",
        "INSERT INTO platform.tenancy (schema_name, claim, required) VALUES",
        "    ('billing', 'tenant_id', true);",
        "DELETE FROM platform.tenant_client;",
        "INSERT INTO platform.tenant_client (role, tenant, cross_tenant) VALUES",
        "    ('api_service_ingest', 'acme', false),",
        "    ('api_service_support', NULL, true);",
    ]


def test_a_domain_schema_other_than_its_name_is_what_the_row_names() -> None:
    raw = copy.deepcopy(_TENANTED)
    raw["domains"]["billing"] |= {
        "schema": "invoicing",
        "tenancy": {"claim": "org", "required": False},
    }
    assert inputs.tenancy(parse_settings("staging", raw)).domains == (("invoicing", "org", False),)


def test_committed_stacks_render_their_tenancy() -> None:
    staging = job_bundle(*_bundle_inputs(stack_settings("staging")))[TENANCY_FILE]
    prod = job_bundle(*_bundle_inputs(stack_settings("prod")))[TENANCY_FILE]
    assert "('billing', 'tenant_id', true)" in staging
    assert "('api_service_ingest', 'acme', false)" in staging
    assert "('api_service_support', NULL, true)" in staging
    assert "('billing', 'tenant_id', true)" in prod
    assert "INSERT INTO platform.tenant_client" not in prod, "prod binds no machine client"


def _bundle_inputs(settings: Any) -> tuple[Any, ...]:
    return (
        inputs.exposed_schemas(settings),
        inputs.group_roles(settings),
        inputs.cache_control(settings),
        inputs.tenancy(settings),
    )


def test_no_tenancy_empties_both_tables() -> None:
    assert render_tenancy_sql(Tenancy()).splitlines()[2:] == [
        "DELETE FROM platform.tenancy;",
        "DELETE FROM platform.tenant_client;",
    ]


def test_values_are_quoted() -> None:
    text = render_tenancy_sql(
        Tenancy(
            domains=(("billing", "https://example.com/o'rg", True),),
            clients=(("api_service_x", "o'hara"),),
        )
    )
    assert "'https://example.com/o''rg'" in text
    assert "'o''hara'" in text


@pytest.mark.parametrize(
    ("tenancy", "hint"),
    [
        ({"domains": (("Billing", "t", True),)}, "not a schema name"),
        ({"domains": (("billing", "", True),)}, "claim of 'billing'"),
        ({"domains": (("billing", "t\n", True),)}, "claim of 'billing'"),
        ({"domains": (("billing", "t", "yes"),)}, "must be a boolean"),
        ({"domains": (("billing", "t", True), ("billing", "u", True))}, "more than once"),
        ({"clients": (("api_user", "acme"),)}, "not a machine client role"),
        ({"clients": (("api_service_x", ""),)}, "tenant of 'api_service_x'"),
        ({"clients": (("api_service_x", "a"), ("api_service_x", None))}, "more than once"),
    ],
)
def test_the_builder_refuses_what_the_tables_would(tenancy: dict[str, Any], hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        Tenancy(**tenancy)


def _service(raw: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for service in raw["services"]:
        if service["name"] == name:
            service.update(fields)
    return raw


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        (
            _service(_TENANTED, "ingest", crossTenant=True),
            "services[1].crossTenant",
            "either scoped to one tenant",
        ),
        (
            _service(_TENANTED, "cms", crossTenant=True),
            "services[0].crossTenant",
            "none of its domains is tenanted",
        ),
        (
            _service(_TENANTED, "cms", tenant="acme"),
            "services[0].tenant",
            "tenanted: ['billing']",
        ),
        (_service(_TENANTED, "ingest", tenant=""), "services[1].tenant", "at least 1"),
        (_service(_TENANTED, "ingest", tenant="a\tb"), "services[1].tenant", "pattern"),
        (
            _service(_STAGING, "cms", crossTenant=True),
            "services[0].crossTenant",
            "tenanted: []",
        ),
    ],
)
def test_machine_client_errors_name_their_key(raw: dict[str, Any], key: str, hint: str) -> None:
    problems = _problems("staging", raw)
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in problems), problems


@pytest.mark.parametrize(
    ("tenancy", "key", "hint"),
    [
        ({}, "domains.billing.tenancy.claim", "Field required"),
        ({"claim": ""}, "domains.billing.tenancy.claim", "at least 1"),
        ({"claim": "t", "require": True}, "domains.billing.tenancy.require", "unknown key"),
        ({"claim": "t", "required": "maybe"}, "domains.billing.tenancy.required", "boolean"),
    ],
)
def test_domain_tenancy_errors_name_their_key(tenancy: dict[str, Any], key: str, hint: str) -> None:
    raw = copy.deepcopy(_TENANTED)
    raw["domains"]["billing"]["tenancy"] = tenancy
    problems = _problems("staging", raw)
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in problems), problems


def test_the_graphql_pilot_cannot_serve_a_tenanted_domain() -> None:
    raw = copy.deepcopy(_TENANTED)
    raw["domains"]["identity"] = {"tenancy": {"claim": "tenant_id"}}
    problems = _problems("staging", raw)
    assert any(
        p.startswith("pgplatform:domains.identity.tenancy") and "graphql.schemas" in p
        for p in problems
    ), problems
    raw["graphql"] = {"enabled": False}
    assert parse_settings("staging", raw).domains["identity"].tenancy is not None
