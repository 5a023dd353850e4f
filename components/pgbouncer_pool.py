"""PgBouncerPool: the transaction-pooling PgBouncer every API connects through."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pulumi_random as random

from components.k8s import KubeObject, meta
from components.render import pgbouncer_pool as render
from components.render.pgbouncer import INI_FILE, RO_SUFFIX, RW_SUFFIX, render_pgbouncer_ini
from components.settings import VaultSettings
from components.vault_secrets import VaultConsumer, VaultSecrets, VaultSecretsArgs

CONSUMER = "pgbouncer"
"""Vault consumer (KV path, policy, role) and Secret ``pgbouncer-secrets``."""
STATS_PASSWORD_LENGTH = 40


@dataclass(frozen=True, kw_only=True)
class PgBouncerPoolArgs:
    """Pooler manifests, pool settings, the database endpoints and where passwords come from."""

    spec: render.PgBouncerPoolSpec
    """Manifest inputs; ``server_ca_secret`` and ``database`` egress come from the fields below."""
    pool: render.PoolSettings
    database: str
    rw_host: pulumi.Input[str]
    ro_host: pulumi.Input[str]
    port: pulumi.Input[int]
    ca_secret: pulumi.Input[str]
    """Secret holding the database CA as ``ca.crt`` ("" when none is known)."""
    cluster_name: pulumi.Input[str]
    """CloudNativePG cluster the pooler may reach ("" for an external database)."""
    auth_password: pulumi.Input[str]
    """Password of ``pgbouncer_auth`` (DatabaseAccess), delivered through Vault."""
    env: str
    vault: VaultSettings

    def __post_init__(self) -> None:
        if self.spec.server_ca_secret is not None or self.spec.database is not None:
            raise ValueError(
                "spec.server_ca_secret/spec.database: leave unset, they follow from ca_secret, "
                "port and cluster_name (which may be Outputs)"
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
    """Generated name of the Deployment."""
    secret_name: pulumi.Output[str]
    """Kubernetes Secret (from Vault) with the lookup and stats passwords."""

    def __init__(
        self, name: str, args: PgBouncerPoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:PgBouncerPool", name, None, opts)
        ns = args.spec.namespace
        labels = render.labels()
        child = pulumi.ResourceOptions(parent=self)

        account = KubeObject(
            f"{name}-sa",
            api_version="v1",
            kind="ServiceAccount",
            metadata=meta(ns, labels),
            body=render.service_account_body(),
            opts=child,
        )
        stats_password = random.RandomPassword(
            f"{name}-stats-password", length=STATS_PASSWORD_LENGTH, special=False, opts=child
        )
        secrets = VaultSecrets(
            f"{name}-vault",
            VaultSecretsArgs(
                namespace=ns,
                env=args.env,
                vault=args.vault,
                consumers=(
                    VaultConsumer(
                        name=CONSUMER,
                        service_account=account.object_name,
                        values={
                            render.AUTH_PASSWORD_KEY: pulumi.Output.secret(args.auth_password),
                            render.STATS_PASSWORD_KEY: pulumi.Output.secret(stats_password.result),
                        },
                    ),
                ),
                labels=labels,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        secret_name = secrets.secret_names[CONSUMER]

        # The endpoints are Outputs; the ini and the spec depend on them.
        resolved = pulumi.Output.all(
            args.rw_host, args.ro_host, args.port, args.ca_secret, args.cluster_name
        ).apply(lambda values: _resolve(args, values))
        ini = resolved.apply(lambda r: r[0])
        spec = resolved.apply(lambda r: r[1])

        config = KubeObject(
            f"{name}-config",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, labels),
            body={"data": ini.apply(lambda text: {INI_FILE: text})},
            opts=child,
        )

        def deployment_spec(parts: list[Any]) -> dict[str, Any]:
            pool_spec, config_map, service_account, ini_text, secrets_checksum = parts
            body = render.deployment_body(
                pool_spec,
                config_map=str(config_map),
                service_account=str(service_account),
                secret_name=secret_name,
                ini_checksum=render.ini_checksum(str(ini_text)),
                secrets_checksum=str(secrets_checksum),
            )
            return dict(body["spec"])

        deployment = KubeObject(
            f"{name}-deployment",
            api_version="apps/v1",
            kind="Deployment",
            metadata=meta(ns, labels),
            body={
                "spec": pulumi.Output.all(
                    spec, config.object_name, account.object_name, ini, secrets.checksums[CONSUMER]
                ).apply(deployment_spec)
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, secrets]),
        )
        KubeObject(
            f"{name}-service",
            api_version="v1",
            kind="Service",
            metadata=meta(ns, labels, name=render.SERVICE_NAME),
            body=render.service_body(),
            opts=child,
        )
        KubeObject(
            f"{name}-pdb",
            api_version="policy/v1",
            kind="PodDisruptionBudget",
            metadata=meta(ns, labels),
            body=render.pdb_body(args.spec),
            opts=child,
        )
        KubeObject(
            f"{name}-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, labels),
            body={"spec": spec.apply(lambda s: render.network_policy_body(s)["spec"])},
            opts=child,
        )

        self.host = pulumi.Output.from_input(f"{render.SERVICE_NAME}.{ns}.svc.cluster.local")
        self.rw_pool = pulumi.Output.from_input(args.database + RW_SUFFIX)
        self.ro_pool = pulumi.Output.from_input(args.database + RO_SUFFIX)
        self.config_map_name = config.object_name
        self.deployment_name = deployment.object_name
        self.secret_name = pulumi.Output.from_input(secret_name)
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


def _resolve(args: PgBouncerPoolArgs, values: list[Any]) -> tuple[str, render.PgBouncerPoolSpec]:
    """The ini and the manifest spec once the database endpoints are known."""
    rw_host, ro_host, port, ca_secret, cluster = values
    ca = str(ca_secret) or None
    verifies = args.pool.server_tls_sslmode in ("verify-ca", "verify-full")
    inp = render.ini_input(
        args.pool,
        database=args.database,
        rw_host=str(rw_host),
        ro_host=str(ro_host),
        port=int(port),
        ca_known=ca is not None,
    )
    spec = replace(
        args.spec,
        server_ca_secret=ca if verifies else None,
        database=render.DatabaseEgress(port=int(port), cluster=str(cluster) or None),
    )
    return render_pgbouncer_ini(inp), spec
