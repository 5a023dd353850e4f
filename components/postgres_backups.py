"""PostgresBackups: the nightly base backup and the monthly restore verification.

The Cluster itself archives WAL through its object store (``ManagedPostgres`` owns the Cluster
and the plugin's ``ObjectStore``); this component adds what runs on a schedule against it. See
``render.restore_check`` for why the verification Job's rights are what they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.k8s import KubeObject, meta
from components.render import restore_check as render
from components.render.postgres_cluster import (
    CNPG_API_VERSION,
    ClusterInput,
    recovery_cluster_spec,
)
from components.settings import StackSettings

ADMISSION_API_VERSION = "admissionregistration.k8s.io/v1"
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"


@dataclass(frozen=True, kw_only=True)
class PostgresBackupsArgs:
    """The cluster to back up (with its object store) and both schedules."""

    cluster: ClusterInput
    check: render.RestoreCheckInput
    backup_schedule: str

    def __post_init__(self) -> None:
        if self.cluster.backup is None:
            raise ValueError("cluster.backup: the Cluster must have an object store configured")
        if self.cluster.backup.destination_path != self.check.destination_path:
            raise ValueError("check.destination_path: must be the Cluster's object store")
        store = self.cluster.backup
        if self.check.object_store != (store.name if store.method == "plugin" else None):
            raise ValueError("check.object_store: must be the Cluster's ObjectStore (plugin only)")
        if self.cluster.database != self.check.database:
            raise ValueError("check.database: must be the Cluster's application database")
        render.check_cnpg_schedule("backup_schedule", self.backup_schedule)


class PostgresBackups(pulumi.ComponentResource):
    """ScheduledBackup, restore-check CronJob with its RBAC, admission policy and network policy."""

    scheduled_backup_name: pulumi.Output[str]
    """Name of the nightly ScheduledBackup."""
    restore_check_cronjob: pulumi.Output[str]
    """Name of the restore verification CronJob (the alerts select on it)."""
    recovery_cluster: pulumi.Output[str]
    """Name of the throw-away Cluster each verification creates and deletes."""

    def __init__(
        self, name: str, args: PostgresBackupsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:PostgresBackups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        check = args.check
        ns = check.namespace
        labels = render.labels(check)

        backup = KubeObject(
            f"{name}-nightly",
            api_version=CNPG_API_VERSION,
            kind="ScheduledBackup",
            metadata=meta(ns, labels),
            body={
                "spec": render.scheduled_backup_spec(
                    cluster=check.source_cluster,
                    schedule=args.backup_schedule,
                    method=args.cluster.backup.method if args.cluster.backup else "plugin",
                )
            },
            opts=child,
        )

        recovery = render.recovery_cluster_manifest(
            check, recovery_cluster_spec(args.cluster, source_cluster=check.source_cluster)
        )
        files = KubeObject(
            f"{name}-restore-check-files",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, labels),
            body={"data": render.config_map_data(check, recovery)},
            opts=child,
        )
        account = KubeObject(
            f"{name}-restore-check-sa",
            api_version="v1",
            kind="ServiceAccount",
            # Fixed name (the CronJob's): the admission policy names it in its match condition.
            metadata=meta(ns, labels, name=check.cronjob_name),
            # Only the Job's pod mounts a token (it asks for one explicitly).
            body={"automountServiceAccountToken": False},
            opts=child,
        )
        role = KubeObject(
            f"{name}-restore-check-role",
            api_version=RBAC_API_VERSION,
            kind="Role",
            metadata=meta(ns, labels),
            body={"rules": render.role_rules(check)},
            opts=child,
        )
        KubeObject(
            f"{name}-restore-check-binding",
            api_version=RBAC_API_VERSION,
            kind="RoleBinding",
            metadata=meta(ns, labels),
            body={
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": role.object_name,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": account.object_name, "namespace": ns}
                ],
            },
            opts=child,
        )
        # Cluster-scoped: no namespace in the metadata.
        policy = KubeObject(
            f"{name}-restore-check-policy",
            api_version=ADMISSION_API_VERSION,
            kind="ValidatingAdmissionPolicy",
            metadata={"labels": labels},
            body={"spec": render.admission_policy_spec(check, check.cronjob_name)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        policy_binding = KubeObject(
            f"{name}-restore-check-policy-binding",
            api_version=ADMISSION_API_VERSION,
            kind="ValidatingAdmissionPolicyBinding",
            metadata={"labels": labels},
            body={"spec": render.admission_binding_spec(check, policy.object_name)},
            opts=child,
        )
        KubeObject(
            f"{name}-restore-check-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, labels),
            body={"spec": render.network_policy_spec(check)},
            opts=child,
        )

        cronjob = KubeObject(
            f"{name}-restore-check",
            api_version="batch/v1",
            kind="CronJob",
            # Fixed name: RestoreVerificationFailed/-Stale select the CronJob and its Jobs by it.
            metadata=meta(ns, labels, name=check.cronjob_name),
            body={
                "spec": render.cronjob_spec(
                    check, config_map=files.object_name, service_account=check.cronjob_name
                )
            },
            # The policy must be in force before the first Job may create a Cluster.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[policy_binding, backup, account, files]
            ),
        )

        self.scheduled_backup_name = backup.object_name
        self.restore_check_cronjob = cronjob.object_name
        self.recovery_cluster = pulumi.Output.from_input(check.recovery_cluster)
        self.register_outputs(
            {
                "scheduled_backup_name": self.scheduled_backup_name,
                "restore_check_cronjob": self.restore_check_cronjob,
                "recovery_cluster": self.recovery_cluster,
            }
        )


def postgres_backups_args(s: StackSettings) -> PostgresBackupsArgs | None:
    """Settings -> args; None when the stack keeps no backups (or the database is external)."""
    from components import inputs

    check = inputs.restore_check_input(s)
    if check is None:
        return None
    return PostgresBackupsArgs(
        cluster=inputs.cluster_input(s, admin_secret=""),
        check=check,
        backup_schedule=s.backup.schedule,
    )
