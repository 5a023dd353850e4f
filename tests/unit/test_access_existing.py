"""The access plan grants on objects that already exist, scoped like the default privileges."""

from __future__ import annotations

import pytest

from components.render.access import (
    AccessInput,
    ObjectGrant,
    ServiceClient,
    build_access_plan,
    render_access_sql,
    service_role,
)

pytestmark = pytest.mark.unit

TIMEOUTS = {"anonymous": 1000, "user": 1000, "editor": 1000, "admin": 1000}


def _plan() -> tuple[ObjectGrant, ...]:
    reporting = ServiceClient(
        name="reporting", schemas=("analytics", "content"), access="read", statement_timeout_ms=1
    )
    return build_access_plan(
        AccessInput(
            schemas=("identity", "content", "analytics"),
            anonymous=False,
            timeouts_ms=TIMEOUTS,
            services=(reporting,),
        )
    ).object_grants


def test_a_service_gets_its_schemas_existing_objects_only() -> None:
    mine = {
        (g.schema, g.object_type, g.privileges)
        for g in _plan()
        if g.role == service_role("reporting")
    }
    assert mine == {
        (schema, object_type, privileges)
        for schema in ("analytics", "content")
        for object_type, privileges in (
            ("table", ("SELECT",)),
            ("sequence", ()),
            ("function", ("EXECUTE",)),
        )
    }


def test_every_api_role_with_default_privileges_has_existing_grants_too() -> None:
    plan = build_access_plan(
        AccessInput(schemas=("identity", "content"), anonymous=True, timeouts_ms=TIMEOUTS)
    )
    with_defaults = {(d.role, d.object_type, d.privileges) for d in plan.default_grants}
    with_existing = {(g.role, g.object_type, g.privileges) for g in plan.object_grants}
    assert with_existing == {d for d in with_defaults if d[0] != "public"}
    sql = render_access_sql(plan, "app")
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "identity" TO "api_anonymous";' in sql
