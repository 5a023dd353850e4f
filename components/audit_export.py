"""AuditExport: audit.log shipped as JSON lines to a spool volume, exactly once (docs/audit.md).

One Deployment (one replica, ``Recreate``: two exporters never share the spool), the spool's
PersistentVolumeClaim, the ConfigMap with the script and its query, and a NetworkPolicy that
lets the pod reach the database and DNS only. It connects like the SQL baseline Job (the admin
role from the admin Secret, the stack's sslmode and CA) with every transaction read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.k8s import KubeObject, meta
from components.managed_postgres import DatabaseEndpoint
from components.render import audit_export as render
from components.sql_baseline import admin_connection


@dataclass(frozen=True, kw_only=True)
class AuditExportArgs:
    namespace: str
    database: str
    sslmode: str
    """libpq sslmode towards the database (``postgres.sslmode``)."""
    endpoint: DatabaseEndpoint
    batch_size: int
    interval_seconds: int
    keep_files: int
    spool_size: str
    storage_class: str | None = None


class AuditExport(pulumi.ComponentResource):
    """ConfigMap, spool claim, exporter Deployment and its NetworkPolicy."""

    deployment_name: pulumi.Output[str]
    """``audit-export``: the name runbooks use."""

    def __init__(
        self, name: str, args: AuditExportArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:AuditExport", name, None, opts)
        ns = args.namespace
        labels = render.labels()
        child = pulumi.ResourceOptions(parent=self)
        spec = _resolve(args)
        files = KubeObject(
            f"{name}-files",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, labels),
            body={"data": render.config_map_data()},
            opts=child,
        )
        claim = KubeObject(
            f"{name}-spool",
            api_version="v1",
            kind="PersistentVolumeClaim",
            metadata=meta(ns, labels, name=render.SPOOL_CLAIM),
            body=render.spool_claim_body(spec),
            opts=child,
        )
        deployment = KubeObject(
            f"{name}-deployment",
            api_version="apps/v1",
            kind="Deployment",
            metadata=meta(ns, labels, name=render.DEPLOYMENT_NAME),
            body=render.deployment_body(spec, config_map=files.object_name),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[files, claim]),
        )
        KubeObject(
            f"{name}-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, labels),
            body=render.exporter_network_policy_body(spec),
            opts=child,
        )
        self.deployment_name = deployment.object_name
        self.register_outputs({"deployment_name": self.deployment_name})


def _resolve(args: AuditExportArgs) -> render.AuditExportSpec:
    return render.AuditExportSpec(
        connection=admin_connection(args.namespace, args.database, args.sslmode, args.endpoint),
        batch_size=args.batch_size,
        interval_seconds=args.interval_seconds,
        keep_files=args.keep_files,
        spool_size=args.spool_size,
        storage_class=args.storage_class,
    )
