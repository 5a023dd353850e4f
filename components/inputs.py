"""Stack settings → the inputs of the pure builders.

The one place that knows both shapes, so the builders stay independent of the config format and
the offline renderer, the components and the tests derive identical inputs.
"""

from __future__ import annotations

from components.render.access import (
    AUTHENTICATOR,
    AccessInput,
    AccessPlan,
    ServiceClient,
    build_access_plan,
)
from components.render.postgres_cluster import ClusterInput
from components.settings import StackSettings, duration_ms

GRAPHQL_AUTHENTICATOR = "postgraphile"


def access_input(s: StackSettings) -> AccessInput:
    timeouts = s.roles.statement_timeout
    return AccessInput(
        schemas=exposed_schemas(s),
        anonymous=s.auth.anonymous,
        timeouts_ms={
            "anonymous": duration_ms(timeouts.anonymous),
            "user": duration_ms(timeouts.user),
            "editor": duration_ms(timeouts.editor),
            "admin": duration_ms(timeouts.admin),
        },
        services=tuple(
            ServiceClient(
                name=svc.name,
                schemas=tuple(s.schema_of(d) for d in svc.schemas or ()),
                access=svc.access,
                statement_timeout_ms=duration_ms(svc.statement_timeout or timeouts.service),
            )
            for svc in s.services
        ),
        authenticators=(AUTHENTICATOR, GRAPHQL_AUTHENTICATOR)
        if s.graphql.enabled
        else (AUTHENTICATOR,),
    )


def access_plan(s: StackSettings) -> AccessPlan:
    return build_access_plan(access_input(s))


def cluster_input(s: StackSettings, admin_secret: str) -> ClusterInput:
    pg = s.postgres
    return ClusterInput(
        instances=pg.instances,
        storage_size=pg.storage_size,
        storage_class=pg.storage_class,
        max_connections=pg.max_connections,
        database=pg.database,
        admin_user=pg.admin_user,
        admin_secret=admin_secret,
        resources=pg.resources.model_dump(),
    )


def exposed_schemas(s: StackSettings) -> tuple[str, ...]:
    return tuple(s.schema_of(d) for d in s.domains)


def sql_files(s: StackSettings) -> list[tuple[str, str]]:
    """The ordered SQL bundle: access plan, then the platform baseline for the exposed schemas."""
    from components.render.access import render_access_sql
    from components.render.baseline import ACCESS_FILE, stack_sql_files

    access = render_access_sql(access_plan(s), s.postgres.database)
    return [(ACCESS_FILE, access), *stack_sql_files(exposed_schemas(s))]
