"""Stack settings → the inputs of the pure builders.

The one place that knows both shapes, so the builders stay independent of the config format and
the offline renderer, the components and the tests derive identical inputs.
"""

from __future__ import annotations

from components.render.access import AccessInput, AccessPlan, ServiceClient, build_access_plan
from components.render.postgres_cluster import ClusterInput
from components.settings import StackSettings, duration_ms


def access_input(s: StackSettings) -> AccessInput:
    timeouts = s.roles.statement_timeout
    return AccessInput(
        schemas=tuple(s.schema_of(d) for d in s.domains),
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


def sql_files(s: StackSettings) -> list[tuple[str, str]]:
    """The ordered SQL bundle that builds the platform's database objects."""
    from components.render.access import render_access_sql

    return [("010_access.sql", render_access_sql(access_plan(s), s.postgres.database))]
