"""One way to declare a stateless workload and a Vault-backed account.

Every long-running workload of the platform is the same chain: a ServiceAccount, its secrets in
Vault (synced into a Kubernetes Secret by External Secrets), a ConfigMap, a Deployment that
mounts both and rolls when either changes, a Service, and the HorizontalPodAutoscaler,
PodDisruptionBudget and NetworkPolicy around it. A component declares what differs (labels,
secret values, config files, the bodies from its pure builder) and :func:`deploy` registers the
chain under it, with the same logical names (``<name>-sa``, ``-vault``, ``-config``,
``-deployment``, ``-service``, ``-hpa``, ``-pdb``, ``-netpol``) whichever workload it is.

Names: the ServiceAccount, Deployment, Service, autoscaler, budget and policy carry the
workload's fixed ``metadata.name`` (``identity-api``, ``pgbouncer``): operators and runbooks type
them, and the autoscaler names its target without waiting for a generated name. The ConfigMap
keeps a generated name, so new content is a new ConfigMap and a rolling update, never an
in-place edit under running pods.

Preview: the Deployment's body is built from :class:`WorkloadRefs`, whose generated ConfigMap
name and secrets checksum are ``Output`` leaves; everything else is known when ``pulumi
preview`` runs, so the policy pack checks the whole pod spec of a new workload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.k8s import KubeObject, meta
from components.settings import VaultSettings
from components.vault_secrets import VaultConsumer, VaultSecrets, VaultSecretsArgs

NO_TOKEN: Mapping[str, Any] = {"automountServiceAccountToken": False}
"""ServiceAccount body of pods that never call the Kubernetes API."""


@dataclass(frozen=True, kw_only=True)
class VaultAccountSpec:
    """A ServiceAccount and the one Vault consumer that authenticates as it."""

    name: str
    """``metadata.name`` of the ServiceAccount (bound to the consumer's Vault role)."""
    namespace: str
    labels: Mapping[str, str]
    env: str
    """Stack name, part of the KV path."""
    vault: VaultSettings
    consumer: str
    """Vault consumer: KV path, policy, role and the Secret ``<consumer>-secrets``."""
    values: Mapping[str, pulumi.Input[str]]
    secret_type: str | None = None
    body: Mapping[str, Any] = field(default_factory=lambda: dict(NO_TOKEN))
    """ServiceAccount fields besides metadata."""


@dataclass(frozen=True)
class VaultAccount:
    """What a Vault-backed account gives the objects that use it."""

    service_account: KubeObject
    service_account_name: str
    secrets: VaultSecrets
    secret_name: str
    """The Kubernetes Secret External Secrets writes (``<consumer>-secrets``)."""
    checksum: pulumi.Output[str]
    """Keyed checksum of the values: the pod-template annotation that rolls the pods."""


def vault_account(
    parent: pulumi.Resource,
    prefix: str,
    spec: VaultAccountSpec,
    *,
    vault_name: str | None = None,
) -> VaultAccount:
    """``<prefix>-sa`` and VaultSecrets ``<prefix>-vault`` (or ``vault_name``) under ``parent``."""
    account = KubeObject(
        f"{prefix}-sa",
        api_version="v1",
        kind="ServiceAccount",
        metadata=meta(spec.namespace, spec.labels, name=spec.name),
        body=spec.body,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    secrets = VaultSecrets(
        vault_name or f"{prefix}-vault",
        VaultSecretsArgs(
            namespace=spec.namespace,
            env=spec.env,
            vault=spec.vault,
            consumers=(
                VaultConsumer(
                    name=spec.consumer,
                    service_account=spec.name,
                    values=spec.values,
                    secret_type=spec.secret_type,
                ),
            ),
            labels=spec.labels,
        ),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[account]),
    )
    return VaultAccount(
        service_account=account,
        service_account_name=spec.name,
        secrets=secrets,
        secret_name=secrets.secret_names[spec.consumer],
        checksum=secrets.checksums[spec.consumer],
    )


@dataclass(frozen=True)
class WorkloadRefs:
    """Names and checksums the Deployment body places; Outputs stay single leaves."""

    name: str
    """The workload's fixed name (Deployment, Service, ...)."""
    service_account: str
    secret_name: str
    config_map: pulumi.Output[str]
    """Generated name of the ConfigMap (unknown on the preview that creates it)."""
    secrets_checksum: pulumi.Output[str]
    """Keyed checksum of the secret values (unknown while a value is)."""


@dataclass(frozen=True, kw_only=True)
class StatelessWorkload:
    """A Deployment with its account, secrets, config and the objects around it."""

    name: str
    """Fixed ``metadata.name`` of the ServiceAccount, Deployment, autoscaler, budget, policy."""
    account: VaultAccountSpec
    config: Mapping[str, pulumi.Input[str]]
    """ConfigMap ``data`` (files the pods mount; never a secret)."""
    deployment: Callable[[WorkloadRefs], Mapping[str, Any]]
    """Deployment body (``{"spec": ...}``) from the pure builder, given the references."""
    service_name: str
    service: Mapping[str, Any]
    """Service body; its name is the workload's DNS contract."""
    pdb: Mapping[str, Any]
    network_policy: Mapping[str, Any]
    hpa: Mapping[str, Any] | None = None
    """Autoscaler body (its ``scaleTargetRef`` names the Deployment ``name``); None: fixed."""
    rollout_after: Sequence[pulumi.Resource] = ()
    """Objects the pods need before they start (e.g. the JWKS ExternalSecret)."""

    def __post_init__(self) -> None:
        if self.account.name != self.name:
            raise ValueError(f"account.name: the workload's account is named {self.name!r}")
        target = (self.hpa or {}).get("spec", {}).get("scaleTargetRef", {}).get("name")
        if self.hpa is not None and target != self.name:
            raise ValueError(f"hpa: scaleTargetRef.name must be {self.name!r}, got {target!r}")


@dataclass(frozen=True)
class Workload:
    """The registered objects of a :class:`StatelessWorkload`."""

    account: VaultAccount
    config: KubeObject
    deployment: KubeObject
    service: KubeObject

    @property
    def secret_name(self) -> str:
        return self.account.secret_name


def deploy(parent: pulumi.Resource, prefix: str, w: StatelessWorkload) -> Workload:
    """Register the chain under ``parent`` as ``<prefix>-<part>``."""
    ns = w.account.namespace
    labels = w.account.labels
    child = pulumi.ResourceOptions(parent=parent)
    account = vault_account(parent, prefix, w.account)
    config = KubeObject(
        f"{prefix}-config",
        api_version="v1",
        kind="ConfigMap",
        metadata=meta(ns, labels),
        body={"data": dict(w.config)},
        opts=child,
    )
    refs = WorkloadRefs(
        name=w.name,
        service_account=account.service_account_name,
        secret_name=account.secret_name,
        config_map=config.object_name,
        secrets_checksum=account.checksum,
    )
    deployment = KubeObject(
        f"{prefix}-deployment",
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta(ns, labels, name=w.name),
        body=w.deployment(refs),
        opts=pulumi.ResourceOptions(
            parent=parent, depends_on=[config, account.secrets, *w.rollout_after]
        ),
    )
    service = KubeObject(
        f"{prefix}-service",
        api_version="v1",
        kind="Service",
        metadata=meta(ns, labels, name=w.service_name),
        body=w.service,
        opts=child,
    )
    if w.hpa is not None:
        KubeObject(
            f"{prefix}-hpa",
            api_version="autoscaling/v2",
            kind="HorizontalPodAutoscaler",
            metadata=meta(ns, labels, name=w.name),
            body=w.hpa,
            opts=pulumi.ResourceOptions(parent=parent, depends_on=[deployment]),
        )
    KubeObject(
        f"{prefix}-pdb",
        api_version="policy/v1",
        kind="PodDisruptionBudget",
        metadata=meta(ns, labels, name=w.name),
        body=w.pdb,
        opts=child,
    )
    KubeObject(
        f"{prefix}-netpol",
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=meta(ns, labels, name=w.name),
        body=w.network_policy,
        opts=child,
    )
    return Workload(account=account, config=config, deployment=deployment, service=service)
