"""VaultSecrets: secrets written to Vault KV v2 and synced into Kubernetes by External Secrets.

Granularity: one SecretStore **per consumer**, not one per namespace. A store authenticates to
Vault as one ServiceAccount, and everything that store can read, any ExternalSecret in the
namespace can copy into a Secret. A shared namespace store would therefore need a Vault role
able to read every consumer's path, and one compromised (or mistyped) ExternalSecret could pull
PgBouncer's credentials into a PostgREST Secret. With a store per consumer, the store uses the
consumer's own ServiceAccount, whose Kubernetes auth role grants exactly one policy, which
grants ``read`` on exactly one KV path: the blast radius of any piece is that consumer's own
secret. The cost is a few more small objects, which the render shows and nobody edits by hand.

Rotation: a changed value changes the keyed checksum (:mod:`components.render.secret_sync`);
the checksum annotation on the ExternalSecret makes the operator sync at once, the one on the
pod template rolls the pods, and the ``wait-for-secrets`` init container keeps a new pod from
starting before the Secret holds the new values. Pulumi is the only writer of these KV paths,
so no in-cluster reloader operator is needed: every change goes through ``pulumi up``, where
the preview shows which workloads will roll.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_random as random
import pulumi_vault as vault

from components.k8s import KubeObject, meta
from components.render import pods
from components.render.secret_sync import CHECKSUM_KEY, SECRETS_CHECKSUM_ANNOTATION, values_checksum
from components.render.secrets import (
    EXTERNAL_SECRETS_API_VERSION,
    SecretKeyRef,
    VaultKvPath,
    external_secret_spec,
    go_duration_seconds,
    render_vault_policy,
    vault_secret_store_spec,
)
from components.settings import VaultSettings

VAULT_AUDIENCE = "vault"
"""``aud`` of the ServiceAccount tokens the stores present; the Vault roles require it, so a
token minted for the Kubernetes API (or anything else) is useless against Vault and vice versa."""

MIN_REFRESH_SECONDS = 60
MAX_REFRESH_SECONDS = 86_400
TOKEN_TTL_SECONDS = 300
TOKEN_MAX_TTL_SECONDS = 900

_CONSUMER = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def secret_name_of(consumer: str) -> str:
    """Name of the Kubernetes Secret a consumer's ExternalSecret produces (a stable contract)."""
    return f"{consumer}-secrets"


@dataclass(frozen=True, kw_only=True)
class VaultConsumer:
    """One workload reading its own secret: values by key, read as ``service_account``."""

    name: str
    """DNS label, e.g. ``identity-postgrest``; names the KV path, policy, role and Secret."""
    service_account: str
    """ServiceAccount (in the namespace) bound to the Vault role; the store authenticates as it.
    A fixed name: the role, the store and the pods refer to it, known before anything exists."""
    values: Mapping[str, pulumi.Input[str]]
    """Secret key -> value; each key is both the KV field and the Kubernetes Secret key."""
    secret_type: str | None = None
    """``type`` of the produced Secret (default ``Opaque``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _CONSUMER.fullmatch(self.name):
            raise ValueError(f"VaultConsumer.name: must be a DNS label, got {self.name!r}")
        if not isinstance(self.service_account, str) or not _CONSUMER.fullmatch(
            self.service_account
        ):
            raise ValueError(
                f"VaultConsumer.service_account: must be a DNS label, got {self.service_account!r}"
            )
        if not self.values:
            raise ValueError(f"VaultConsumer.values: {self.name!r} needs at least one value")
        for key in self.values:
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise ValueError(
                    f"VaultConsumer.values: {key!r} must match [A-Za-z0-9_.-]{{1,128}} "
                    "(a KV field and a Secret key at once)"
                )
            if key == CHECKSUM_KEY:
                raise ValueError(f"VaultConsumer.values: {CHECKSUM_KEY!r} is reserved")


@dataclass(frozen=True, kw_only=True)
class VaultSecretsArgs:
    """Where the secrets live and who reads them."""

    namespace: str
    env: str
    """Stack name: the KV paths are ``<mount>/data/pgplatform/<env>/<consumer>``."""
    vault: VaultSettings
    consumers: tuple[VaultConsumer, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels of the SecretStores, ExternalSecrets and the Secrets they produce."""

    def __post_init__(self) -> None:
        seconds = go_duration_seconds(self.vault.refresh_interval, where="vault.refresh_interval")
        if not MIN_REFRESH_SECONDS <= seconds <= MAX_REFRESH_SECONDS:
            raise ValueError(
                f"vault.refresh_interval: must be between 1m and 24h, "
                f"got {self.vault.refresh_interval!r}"
            )
        if not self.consumers:
            raise ValueError("consumers: needs at least one VaultConsumer")
        names = [c.name for c in self.consumers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"consumers: duplicate consumer names {duplicates}")
        VaultKvPath(mount=self.vault.kv_mount, env=self.env, consumer=names[0])


class VaultSecrets(pulumi.ComponentResource):
    """Per consumer: KV v2 secret, read-only policy, Kubernetes auth role, store, ExternalSecret."""

    secret_names: dict[str, str]
    """Kubernetes Secret produced per consumer (``<consumer>-secrets``)."""
    checksums: dict[str, pulumi.Output[str]]
    """Keyed checksum of each consumer's values, for the pod-template annotation (not secret)."""
    store_names: dict[str, pulumi.Output[str]]
    """SecretStore name per consumer."""
    kv_paths: dict[str, str]
    """Path inside the KV mount per consumer (ExternalSecret ``remoteRef.key``)."""

    def __init__(
        self, name: str, args: VaultSecretsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:VaultSecrets", name, None, opts)
        self.secret_names = {}
        self.checksums = {}
        self.store_names = {}
        self.kv_paths = {}
        for consumer in args.consumers:
            self._consumer(name, args, consumer)
        self.register_outputs(
            {
                "secret_names": self.secret_names,
                "checksums": self.checksums,
                "store_names": self.store_names,
                "kv_paths": self.kv_paths,
            }
        )

    def _consumer(self, name: str, args: VaultSecretsArgs, consumer: VaultConsumer) -> None:
        child = pulumi.ResourceOptions(parent=self)
        part = f"{name}-{consumer.name}"
        path = VaultKvPath(mount=args.vault.kv_mount, env=args.env, consumer=consumer.name)
        keys = sorted(consumer.values)

        checksum_key = random.RandomPassword(
            f"{part}-checksum-key", length=48, special=False, opts=child
        )
        secret_values = [pulumi.Output.secret(consumer.values[k]) for k in keys]
        checksum = pulumi.Output.unsecret(
            pulumi.Output.all(checksum_key.result, *secret_values).apply(
                lambda parts: values_checksum(
                    str(parts[0]), dict(zip(keys, parts[1:], strict=True))
                )
            )
        )
        data: dict[str, Any] = dict(zip(keys, secret_values, strict=True))
        data[CHECKSUM_KEY] = checksum
        # Every value is a secret already, so the JSON is too; the wrap keeps that explicit.
        data_json: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.json_dumps(data))
        kv = vault.kv.SecretV2(
            f"{part}-kv",
            mount=args.vault.kv_mount,
            name=path.secret_path,
            data_json=data_json,
            # Old versions hold old passwords: destroying the consumer removes them all.
            delete_all_versions=True,
            opts=child,
        )
        policy = vault.Policy(
            f"{part}-policy",
            name=path.policy_name,
            policy=render_vault_policy(path.mount, path.secret_path),
            opts=child,
        )
        role = vault.kubernetes.AuthBackendRole(
            f"{part}-role",
            backend=args.vault.kubernetes_auth_path,
            role_name=path.policy_name,
            bound_service_account_names=[consumer.service_account],
            bound_service_account_namespaces=[args.namespace],
            audience=VAULT_AUDIENCE,
            token_policies=[policy.name],
            token_ttl=TOKEN_TTL_SECONDS,
            token_max_ttl=TOKEN_MAX_TTL_SECONDS,
            opts=child,
        )
        labels = {**args.labels, "app.kubernetes.io/part-of": pods.PART_OF}
        store = KubeObject(
            f"{part}-store",
            api_version=EXTERNAL_SECRETS_API_VERSION,
            kind="SecretStore",
            metadata=meta(args.namespace, labels),
            body={
                "spec": vault_secret_store_spec(
                    server=args.vault.address,
                    mount=path.mount,
                    auth_role=path.policy_name,
                    service_account=consumer.service_account,
                    auth_mount_path=args.vault.kubernetes_auth_path,
                    audiences=(VAULT_AUDIENCE,),
                )
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )
        secret_name = secret_name_of(consumer.name)
        refs = [
            SecretKeyRef(secret_key=k, remote_key=path.secret_path, remote_property=k)
            for k in [*keys, CHECKSUM_KEY]
        ]
        KubeObject(
            f"{part}-external",
            api_version=EXTERNAL_SECRETS_API_VERSION,
            kind="ExternalSecret",
            # A new checksum changes the object's metadata, which makes the operator sync now.
            metadata={
                **meta(args.namespace, labels),
                "annotations": {SECRETS_CHECKSUM_ANNOTATION: checksum},
            },
            body={
                "spec": external_secret_spec(
                    store_name=store.object_name,
                    target_secret=secret_name,
                    data=refs,
                    refresh_interval=args.vault.refresh_interval,
                    secret_labels=labels,
                    secret_type=consumer.secret_type,
                )
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[kv, store]),
        )
        self.secret_names[consumer.name] = secret_name
        self.checksums[consumer.name] = checksum
        self.store_names[consumer.name] = store.object_name
        self.kv_paths[consumer.name] = path.secret_path
