"""build_platform: instantiate and wire the components of one stack."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import inputs
from components.database_access import DatabaseAccess, DatabaseAccessArgs
from components.managed_postgres import ManagedPostgres, ManagedPostgresArgs
from components.settings import StackSettings


@dataclass(frozen=True)
class Platform:
    """The components of a stack, for outputs and tests."""

    database: ManagedPostgres
    access: DatabaseAccess


def build_platform(s: StackSettings) -> Platform:
    """Everything one stack deploys; settings are already validated."""
    pg = s.postgres
    database = ManagedPostgres(
        "postgres",
        ManagedPostgresArgs(
            namespace=s.namespace,
            mode=pg.mode,
            database=pg.database,
            port=pg.port,
            admin_user=pg.admin_user,
            cluster=inputs.cluster_input(s, admin_secret="") if pg.mode == "cnpg" else None,
            external_rw_host=pg.host,
            external_ro_host=pg.ro_host,
            external_ca_secret=pg.ca_secret,
            admin_password=(
                s.postgres_admin_password.get_secret_value()
                if s.postgres_admin_password is not None
                else None
            ),
        ),
    )
    access = DatabaseAccess(
        "access",
        DatabaseAccessArgs(
            plan=inputs.access_plan(s),
            host=database.rw_host,
            port=database.port,
            database=pg.database,
            admin_user=pg.admin_user,
            admin_password=database.admin_password,
            sslmode=pg.sslmode,
        ),
        opts=pulumi.ResourceOptions(depends_on=[database]),
    )
    return Platform(database=database, access=access)


def export_outputs(platform: Platform) -> None:
    """Stack outputs: endpoints only, never a secret."""
    pulumi.export("postgresRwHost", platform.database.rw_host)
    pulumi.export("postgresRoHost", platform.database.ro_host)


def report_lines(s: StackSettings) -> list[str]:
    """Extra tables the offline render prints after the resource summary."""
    plan = inputs.access_plan(s)
    return ["", f"API roles: {', '.join(plan.api_roles)}"]
