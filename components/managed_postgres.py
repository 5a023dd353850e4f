"""ManagedPostgres: the platform database, in-cluster (CloudNativePG) or an external endpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pulumi
import pulumi_random as random

from components.k8s import KubeObject, meta
from components.render import cdc, pods
from components.render.baseline import BOOTSTRAP_KEY
from components.render.metrics_catalog import cnpg_custom_queries_yaml
from components.render.postgres_cluster import (
    CNPG_API_VERSION,
    CUSTOM_QUERIES_KEY,
    OBJECT_STORE_API_VERSION,
    POSTGRES_IMAGE,
    ClusterInput,
    await_ready_annotations,
    cluster_spec,
    object_store_spec,
)
from components.settings import VaultSettings
from components.workload import VaultAccount, VaultAccountSpec, vault_account

BOOTSTRAP_SUFFIX = "bootstrap-sql"
"""``<cluster>-bootstrap-sql``: the ConfigMap with the superuser part of the SQL baseline."""


@dataclass(frozen=True, kw_only=True)
class DatabaseEndpoint:
    """Where clients connect, known when the program runs (no provider computes any of it)."""

    rw_host: str
    ro_host: str
    port: int
    ca_secret: str | None
    """Secret whose ``ca.crt`` verifies the server; None when none is known."""
    cluster: str | None
    """CloudNativePG cluster name; None for an external database."""
    admin_secret: str
    """basic-auth Secret of the admin role (synced from Vault)."""
    cdc_secret: str | None = None
    """basic-auth Secret of the change data capture publication role (when configured)."""
    image: str = POSTGRES_IMAGE
    """The server's PostgreSQL image (``postgres.image``): the platform's SQL Jobs run its
    ``psql``, so a stack pulling from a mirror pulls nothing else for them."""


@dataclass(frozen=True, kw_only=True)
class ManagedPostgresArgs:
    """``mode`` cnpg creates a Cluster; external only publishes the given endpoints."""

    namespace: str
    env: str
    """Stack name (the Vault KV path of the admin credentials)."""
    vault: VaultSettings
    mode: str
    database: str
    port: int
    admin_user: str
    cluster: ClusterInput | None = None
    external_rw_host: str | None = None
    external_ro_host: str | None = None
    admin_password: pulumi.Input[str] | None = None
    external_ca_secret: str | None = None
    client_image: str = POSTGRES_IMAGE
    """Mode external: the PostgreSQL image whose ``psql`` the SQL Jobs run (``postgres.image``);
    mode cnpg takes the Cluster's."""
    bootstrap_sql: str | None = None
    """Mode cnpg: SQL CloudNativePG runs once as superuser in the new application database
    (the superuser part of the platform baseline, docs/database.md)."""
    cdc_max_slot_wal_keep_size: str | None = None
    """Change data capture on (``max_slot_wal_keep_size``, e.g. ``5120MB``): the publication
    role's password in Vault; in mode cnpg the Cluster creates the role, decodes logical WAL and
    reaches itself through an ``externalClusters`` entry (render/cdc.py)."""

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
    cluster_name: pulumi.Output[str]
    """Name of the CloudNativePG Cluster ("" in mode external)."""
    endpoint: DatabaseEndpoint
    """The endpoints as plain values, for manifests that must be complete at preview."""

    def __init__(
        self, name: str, args: ManagedPostgresArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:ManagedPostgres", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = pods.labels("postgres", "database", name)

        if args.cluster is None:  # mode external (ManagedPostgresArgs checked the pairing)
            self.admin_password = pulumi.Output.secret(args.admin_password or "")
            password = self.admin_password
        else:
            generated = random.RandomPassword(
                f"{name}-admin-password", length=40, special=False, opts=child
            )
            password = generated.result
            self.admin_password = pulumi.Output.secret(password)

        # The admin credentials reach Kubernetes only through Vault (no Secret with a literal
        # value is ever registered, so GitOps render mode writes none to disk either).
        admin = vault_account(
            self,
            f"{name}-admin",
            VaultAccountSpec(
                name=f"{name}-admin",
                namespace=args.namespace,
                labels=meta_labels,
                env=args.env,
                vault=args.vault,
                consumer=f"{name}-admin",
                values={"username": args.admin_user, "password": password},
                secret_type="kubernetes.io/basic-auth",  # noqa: S106 - a type name
            ),
            vault_name=f"{name}-admin",
        )
        admin_secrets = admin.secrets
        admin_secret_name = admin.secret_name
        self.admin_secret_name = pulumi.Output.from_input(admin_secret_name)
        cdc_account = self._cdc_account(name, args, meta_labels)
        cdc_secret = cdc_account.secret_name if cdc_account else None

        if args.cluster is not None:  # mode cnpg
            cluster_name = f"{name}-db"
            cluster_args = args.cluster
            bootstrap = self._bootstrap_sql(name, args, cluster_name, meta_labels)
            if bootstrap is not None:
                cluster_args = replace(
                    cluster_args,
                    post_init_application_sql=(f"{cluster_name}-{BOOTSTRAP_SUFFIX}", BOOTSTRAP_KEY),
                )
            # The platform's extra monitoring queries (statements, per-schema rows); the
            # PodMonitor scraping them is ObservabilityStack's, next to the alerts using them.
            queries = KubeObject(
                f"{name}-monitoring-queries",
                api_version="v1",
                kind="ConfigMap",
                metadata=meta(args.namespace, meta_labels),
                body={"data": {CUSTOM_QUERIES_KEY: cnpg_custom_queries_yaml()}},
                opts=child,
            )
            store = self._object_store(name, args, cluster_args, meta_labels)
            if cdc_secret is not None and args.cdc_max_slot_wal_keep_size:
                cluster_args = replace(
                    cluster_args,
                    extra_parameters=(
                        ("wal_level", "logical"),
                        ("max_slot_wal_keep_size", args.cdc_max_slot_wal_keep_size),
                    ),
                    extra_roles=(cdc.managed_role(cdc_secret),),
                    external_clusters=(
                        cdc.external_cluster(
                            host=f"{cluster_name}-rw.{args.namespace}.svc.cluster.local",
                            port=args.port,
                            database=args.database,
                            password_secret=cdc_secret,
                            ca_secret=f"{cluster_name}-ca",
                        ),
                    ),
                )
            KubeObject(
                f"{name}-cluster",
                api_version=CNPG_API_VERSION,
                kind="Cluster",
                # Awaited until Ready: everything that connects depends on this object.
                metadata=meta(
                    args.namespace,
                    meta_labels,
                    name=cluster_name,
                    annotations=await_ready_annotations(),
                ),
                body={
                    "spec": cluster_spec(
                        replace(
                            cluster_args,
                            admin_secret=admin_secret_name,
                            custom_queries_config_map=queries.object_name,
                        )
                    )
                },
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # The WAL archiver's ObjectStore exists before the first segment is archived.
                    depends_on=[
                        admin_secrets,
                        *([cdc_account.secrets] if cdc_account else []),
                        queries,
                        *([bootstrap] if bootstrap else []),
                        *([store] if store else []),
                    ],
                ),
            )
        self.port = pulumi.Output.from_input(args.port)
        if args.cluster is not None:
            # CloudNativePG's Services: <cluster>-rw (primary) and <cluster>-ro (replicas only).
            domain = f"{args.namespace}.svc.cluster.local"
            self.endpoint = DatabaseEndpoint(
                rw_host=f"{cluster_name}-rw.{domain}",
                ro_host=f"{cluster_name}-ro.{domain}",
                port=args.port,
                ca_secret=f"{cluster_name}-ca",
                cluster=cluster_name,
                admin_secret=admin_secret_name,
                cdc_secret=cdc_secret,
                image=args.cluster.image,
            )
        else:
            self.endpoint = DatabaseEndpoint(
                rw_host=args.external_rw_host or "",
                ro_host=args.external_ro_host or "",
                port=args.port,
                ca_secret=args.external_ca_secret or None,
                cluster=None,
                admin_secret=admin_secret_name,
                cdc_secret=cdc_secret,
                image=args.client_image,
            )
        endpoint = self.endpoint
        self.rw_host = pulumi.Output.from_input(endpoint.rw_host)
        self.ro_host = pulumi.Output.from_input(endpoint.ro_host)
        self.ca_secret_name = pulumi.Output.from_input(endpoint.ca_secret or "")
        self.cluster_name = pulumi.Output.from_input(endpoint.cluster or "")

        self.register_outputs(
            {
                "rw_host": self.rw_host,
                "ro_host": self.ro_host,
                "port": self.port,
                "admin_password": self.admin_password,
                "admin_secret_name": self.admin_secret_name,
                "ca_secret_name": self.ca_secret_name,
                "cluster_name": self.cluster_name,
            }
        )

    def _cdc_account(
        self, name: str, args: ManagedPostgresArgs, labels: dict[str, str]
    ) -> VaultAccount | None:
        """The publication role's generated password, in Vault and synced to a basic-auth
        Secret (the Cluster's managed role and ``externalClusters`` entry read it)."""
        if not args.cdc_max_slot_wal_keep_size:
            return None
        password = random.RandomPassword(
            f"{name}-cdc-password",
            length=40,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return vault_account(
            self,
            f"{name}-cdc",
            VaultAccountSpec(
                name=f"{name}-cdc",
                namespace=args.namespace,
                labels=labels,
                env=args.env,
                vault=args.vault,
                consumer=f"{name}-cdc",
                values={"username": cdc.ROLE, "password": password.result},
                secret_type="kubernetes.io/basic-auth",  # noqa: S106 - a type name
            ),
            vault_name=f"{name}-cdc",
        )

    def _object_store(
        self, name: str, args: ManagedPostgresArgs, cluster: ClusterInput, labels: dict[str, str]
    ) -> KubeObject | None:
        """The Barman Cloud plugin's ``ObjectStore`` the Cluster archives to (method plugin)."""
        if cluster.backup is None or cluster.backup.method != "plugin":
            return None
        return KubeObject(
            f"{name}-backup-store",
            api_version=OBJECT_STORE_API_VERSION,
            kind="ObjectStore",
            # Fixed name: the Cluster's plugin parameters and every recovery refer to it.
            metadata=meta(args.namespace, labels, name=cluster.backup.name),
            body={"spec": object_store_spec(cluster.backup)},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _bootstrap_sql(
        self, name: str, args: ManagedPostgresArgs, cluster_name: str, labels: dict[str, str]
    ) -> KubeObject | None:
        """The ConfigMap ``postInitApplicationSQLRefs`` names. Its name is fixed: the Cluster's
        bootstrap section refers to it and must not change after the cluster exists."""
        if not args.bootstrap_sql:
            return None
        return KubeObject(
            f"{name}-bootstrap-sql",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(args.namespace, labels, name=f"{cluster_name}-{BOOTSTRAP_SUFFIX}"),
            body={"data": {BOOTSTRAP_KEY: args.bootstrap_sql}},
            opts=pulumi.ResourceOptions(parent=self),
        )
