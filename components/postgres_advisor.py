"""PostgresAdvisor: the advisor's scheduled run in the cluster (``render.advisor_job``).

A CronJob with a fixed name (the alert and the runbook select it) and its NetworkPolicy; the pod
connects as the admin role through the Secret the baseline Job uses (see the render module for
why that login).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.k8s import KubeObject, meta
from components.managed_postgres import DatabaseEndpoint
from components.render import advisor_job as render
from components.sql_baseline import admin_connection


@dataclass(frozen=True, kw_only=True)
class PostgresAdvisorArgs:
    """Where the advisor runs, when, with which image, and how it reaches the database."""

    namespace: str
    database: str
    sslmode: str
    schedule: str
    image: str
    endpoint: DatabaseEndpoint
    """Host, port, CA Secret, cluster and admin Secret (ManagedPostgres.endpoint)."""
    others: tuple[render.AdvisedDatabase, ...] = ()
    """Further databases and their served schemas (the CDC database serving the copies)."""


class PostgresAdvisor(pulumi.ComponentResource):
    """CronJob running ``python -m tools.advisor --fail-on error`` and its NetworkPolicy."""

    cronjob_name: pulumi.Output[str]
    """Name of the CronJob (``PostgresAdvisorFindings`` selects its Jobs by it)."""

    def __init__(
        self, name: str, args: PostgresAdvisorArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:PostgresAdvisor", name, None, opts)
        inp = render.AdvisorJobInput(
            connection=admin_connection(args.namespace, args.database, args.sslmode, args.endpoint),
            schedule=args.schedule,
            image=args.image,
            others=args.others,
        )
        labels = render.labels()
        child = pulumi.ResourceOptions(parent=self)
        KubeObject(
            f"{name}-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(args.namespace, labels),
            body=render.network_policy_body(inp),
            opts=child,
        )
        cronjob = KubeObject(
            f"{name}-cronjob",
            api_version="batch/v1",
            kind="CronJob",
            # Fixed name: PostgresAdvisorFindings selects the CronJob's Jobs by it.
            metadata=meta(args.namespace, labels, name=render.CRONJOB_NAME),
            body={"spec": render.cronjob_spec(inp)},
            opts=child,
        )
        self.cronjob_name = cronjob.object_name
        self.register_outputs({"cronjob_name": self.cronjob_name})
