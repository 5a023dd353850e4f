"""ManagedPostgres: the platform database, in-cluster (CloudNativePG) or an external endpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pulumi
import pulumi_random as random

from components.k8s import KubeObject, meta
from components.render import pods
from components.render.postgres_cluster import CNPG_API_VERSION, ClusterInput, cluster_spec


@dataclass(frozen=True, kw_only=True)
class ManagedPostgresArgs:
    """``mode`` cnpg creates a Cluster; external only publishes the given endpoints."""

    namespace: str
    mode: str
    database: str
    port: int
    admin_user: str
    cluster: ClusterInput | None = None
    external_rw_host: str | None = None
    external_ro_host: str | None = None
    admin_password: pulumi.Input[str] | None = None
    external_ca_secret: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in {"cnpg", "external"}:
            raise ValueError(f"mode: must be 'cnpg' or 'external', got {self.mode!r}")
        if (self.mode == "cnpg") != (self.cluster is not None):
            raise ValueError("cluster: required in mode 'cnpg' and only there")
        if self.mode == "external" and not (self.external_rw_host and self.external_ro_host):
            raise ValueError("external_rw_host/external_ro_host: required in mode 'external'")
        if self.mode == "external" and self.admin_password is None:
            raise ValueError("admin_password: required in mode 'external'")


class ManagedPostgres(pulumi.ComponentResource):
    """The database and its read-write / read-only endpoints."""

    rw_host: pulumi.Output[str]
    """Host of the primary (read-write)."""
    ro_host: pulumi.Output[str]
    """Host load-balancing over the read replicas."""
    port: pulumi.Output[int]
    """PostgreSQL port of both endpoints."""
    admin_password: pulumi.Output[str]
    """Secret password of the admin role the access plan is applied with."""
    admin_secret_name: pulumi.Output[str]
    """Kubernetes Secret (username/password) of the admin role."""
    ca_secret_name: pulumi.Output[str]
    """Kubernetes Secret whose ``ca.crt`` verifies the server certificate ("" if unknown)."""

    def __init__(
        self, name: str, args: ManagedPostgresArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:ManagedPostgres", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = pods.labels("postgres", "database", name)

        if args.cluster is None:  # mode external (ManagedPostgresArgs checked the pairing)
            self.rw_host = pulumi.Output.from_input(args.external_rw_host or "")
            self.ro_host = pulumi.Output.from_input(args.external_ro_host or "")
            self.admin_password = pulumi.Output.secret(args.admin_password or "")
            password = self.admin_password
        else:
            generated = random.RandomPassword(
                f"{name}-admin-password", length=40, special=False, opts=child
            )
            password = generated.result
            self.admin_password = pulumi.Output.secret(password)

        admin_secret = KubeObject(
            f"{name}-admin",
            api_version="v1",
            kind="Secret",
            metadata=meta(args.namespace, meta_labels),
            body={
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": args.admin_user, "password": password},
            },
            secret_fields=["stringData"],
            opts=child,
        )
        self.admin_secret_name = admin_secret.object_name

        if args.cluster is not None:  # mode cnpg
            cluster_name = f"{name}-db"
            cluster_args = args.cluster
            cluster = KubeObject(
                f"{name}-cluster",
                api_version=CNPG_API_VERSION,
                kind="Cluster",
                metadata=meta(args.namespace, meta_labels, name=cluster_name),
                body={
                    "spec": admin_secret.object_name.apply(
                        lambda secret: cluster_spec(_with_secret(cluster_args, secret))
                    )
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[admin_secret]),
            )
            KubeObject(
                f"{name}-podmonitor",
                api_version="monitoring.coreos.com/v1",
                kind="PodMonitor",
                metadata=meta(args.namespace, meta_labels),
                body={
                    "spec": {
                        "selector": {"matchLabels": {"cnpg.io/cluster": cluster_name}},
                        "podMetricsEndpoints": [{"port": "metrics"}],
                    }
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
            )
            # CloudNativePG's Services: <cluster>-rw (primary) and <cluster>-ro (replicas only).
            domain = f"{args.namespace}.svc.cluster.local"
            self.rw_host = pulumi.Output.from_input(f"{cluster_name}-rw.{domain}")
            self.ro_host = pulumi.Output.from_input(f"{cluster_name}-ro.{domain}")
            self.ca_secret_name = pulumi.Output.from_input(f"{cluster_name}-ca")
        else:
            self.ca_secret_name = pulumi.Output.from_input(args.external_ca_secret or "")
        self.port = pulumi.Output.from_input(args.port)

        self.register_outputs(
            {
                "rw_host": self.rw_host,
                "ro_host": self.ro_host,
                "port": self.port,
                "admin_password": self.admin_password,
                "admin_secret_name": self.admin_secret_name,
                "ca_secret_name": self.ca_secret_name,
            }
        )


def _with_secret(cluster: ClusterInput, secret: str) -> ClusterInput:
    """The Cluster must name the Secret Kubernetes actually created (it is auto-named)."""
    return replace(cluster, admin_secret=secret)
