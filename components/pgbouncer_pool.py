"""PgBouncerPool: the transaction-pooling PgBouncer every API connects through."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pulumi_random as random

from components.managed_postgres import DatabaseEndpoint
from components.render import pgbouncer_pool as render
from components.render.pgbouncer import INI_FILE, RO_SUFFIX, RW_SUFFIX, render_pgbouncer_ini
from components.settings import VaultSettings
from components.workload import StatelessWorkload, VaultAccountSpec, WorkloadRefs, deploy

CONSUMER = "pgbouncer"
"""Vault consumer (KV path, policy, role) and Secret ``pgbouncer-secrets``."""
STATS_PASSWORD_LENGTH = 40


@dataclass(frozen=True, kw_only=True)
class PgBouncerPoolArgs:
    """Pooler manifests, pool settings, the database endpoints and where passwords come from."""

    spec: render.PgBouncerPoolSpec
    """Manifest inputs; ``server_ca_secret`` and ``database`` egress come from ``endpoint``."""
    pool: render.PoolSettings
    database: str
    endpoint: DatabaseEndpoint
    """Hosts, port, CA Secret and cluster of the database (ManagedPostgres.endpoint)."""
    auth_password: pulumi.Input[str]
    """Password of ``pgbouncer_auth`` (DatabaseAccess), delivered through Vault."""
    env: str
    vault: VaultSettings

    def __post_init__(self) -> None:
        if self.spec.server_ca_secret is not None or self.spec.database is not None:
            raise ValueError(
                "spec.server_ca_secret/spec.database: leave unset, they follow from endpoint"
            )
        if not self.env:
            raise ValueError("env: the stack name is required (part of the Vault path)")
        if self.pool.server_tls_sslmode not in (
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ):
            raise ValueError(f"pool.server_tls_sslmode: unknown {self.pool.server_tls_sslmode!r}")


class PgBouncerPool(pulumi.ComponentResource):
    """PgBouncer + exporter: Deployment, ConfigMap, Service, PDB, NetworkPolicy, Vault secret."""

    host: pulumi.Output[str]
    """In-cluster DNS name of the Service (``pgbouncer.<namespace>.svc.cluster.local``)."""
    rw_pool: pulumi.Output[str]
    """Pool database for reads and writes (primary)."""
    ro_pool: pulumi.Output[str]
    """Pool database for reads from the replicas."""
    config_map_name: pulumi.Output[str]
    """Generated name of the ConfigMap holding ``pgbouncer.ini``."""
    deployment_name: pulumi.Output[str]
    """Name of the Deployment (``pgbouncer``)."""
    secret_name: pulumi.Output[str]
    """Kubernetes Secret (from Vault) with the lookup and stats passwords."""

    def __init__(
        self, name: str, args: PgBouncerPoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:PgBouncerPool", name, None, opts)
        ns = args.spec.namespace
        labels = render.labels()
        stats_password = random.RandomPassword(
            f"{name}-stats-password",
            length=STATS_PASSWORD_LENGTH,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        ini, spec = _resolve(args)
        ini_checksum = render.ini_checksum(ini)

        def deployment(refs: WorkloadRefs) -> dict[str, Any]:
            return render.deployment_body(
                spec,
                config_map=refs.config_map,
                service_account=refs.service_account,
                secret_name=refs.secret_name,
                ini_checksum=ini_checksum,
                secrets_checksum=refs.secrets_checksum,
            )

        workload = deploy(
            self,
            name,
            StatelessWorkload(
                name=render.SERVICE_NAME,
                account=VaultAccountSpec(
                    name=render.SERVICE_NAME,
                    namespace=ns,
                    labels=labels,
                    env=args.env,
                    vault=args.vault,
                    consumer=CONSUMER,
                    values={
                        render.AUTH_PASSWORD_KEY: pulumi.Output.secret(args.auth_password),
                        render.STATS_PASSWORD_KEY: pulumi.Output.secret(stats_password.result),
                    },
                    body=render.service_account_body(),
                ),
                config={INI_FILE: ini},
                deployment=deployment,
                service_name=render.SERVICE_NAME,
                service=render.service_body(),
                pdb=render.pdb_body(spec),
                network_policy=render.network_policy_body(spec),
            ),
        )

        self.host = pulumi.Output.from_input(f"{render.SERVICE_NAME}.{ns}.svc.cluster.local")
        self.rw_pool = pulumi.Output.from_input(args.database + RW_SUFFIX)
        self.ro_pool = pulumi.Output.from_input(args.database + RO_SUFFIX)
        self.config_map_name = workload.config.object_name
        self.deployment_name = workload.deployment.object_name
        self.secret_name = pulumi.Output.from_input(workload.secret_name)
        self.register_outputs(
            {
                "host": self.host,
                "rw_pool": self.rw_pool,
                "ro_pool": self.ro_pool,
                "config_map_name": self.config_map_name,
                "deployment_name": self.deployment_name,
                "secret_name": self.secret_name,
            }
        )


def _resolve(args: PgBouncerPoolArgs) -> tuple[str, render.PgBouncerPoolSpec]:
    """The ini and the manifest spec for the database endpoints."""
    endpoint = args.endpoint
    verifies = args.pool.server_tls_sslmode in ("verify-ca", "verify-full")
    inp = render.ini_input(
        args.pool,
        database=args.database,
        rw_host=endpoint.rw_host,
        ro_host=endpoint.ro_host,
        port=endpoint.port,
        ca_known=endpoint.ca_secret is not None,
    )
    spec = replace(
        args.spec,
        server_ca_secret=endpoint.ca_secret if verifies else None,
        database=render.DatabaseEgress(port=endpoint.port, cluster=endpoint.cluster),
    )
    return render_pgbouncer_ini(inp), spec
