"""Pure builders for Vault (KV v2) and External Secrets Operator (``external-secrets.io/v1``).

Layout: every consumer (e.g. ``identity-postgrest``) owns exactly one KV v2 secret at
``<mount>/data/pgplatform/<env>/<consumer>``, readable only through a Vault policy that names
that one path, bound to one Kubernetes ServiceAccount via a Kubernetes auth role. External
Secrets copies it into a Kubernetes Secret. Names contain no glob characters, so a policy path
can never match another consumer's secret.

The prod JWKS is not in Vault: PostgREST cannot fetch a URL, so an ExternalSecret with the
``webhook`` provider fetches the identity provider's ``jwks_uri`` into the Secret key
``jwks.json`` on every refresh (see docs/jwt-keys.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from components.render.pods import Placed

EXTERNAL_SECRETS_API_VERSION = "external-secrets.io/v1"
KV_PREFIX = "pgplatform"
JWKS_FILE_KEY = "jwks.json"

StoreKind = Literal["SecretStore", "ClusterSecretStore"]
CreationPolicy = Literal["Owner", "Orphan", "Merge"]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_MOUNT = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
_KV_PATH = re.compile(r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?(/[a-z0-9]([-a-z0-9_]*[a-z0-9])?)*")
_VAULT_ROLE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_KV_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_GO_DURATION = re.compile(r"(?:([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def _check(pattern: re.Pattern[str], where: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{where}: must be {what}, got {value!r}")
    return value


def go_duration_seconds(value: str, *, where: str = "duration") -> float:
    """Parse a Go ``time.Duration`` string (what ESO's ``refreshInterval`` takes) to seconds."""
    _check(_GO_DURATION, where, value, "a Go duration like '15m' or '1h30m'")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def _check_interval(where: str, value: str, *, minimum: float, maximum: float) -> str:
    seconds = go_duration_seconds(value, where=where)
    if not minimum <= seconds <= maximum:
        raise ValueError(f"{where}: must be between {minimum:g}s and {maximum:g}s, got {value!r}")
    return value


def _check_url(where: str, value: object, *, allow_http: bool) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    schemes = ("https", "http") if allow_http else ("https",)
    if (
        parts is None
        or parts.scheme not in schemes
        or not parts.hostname
        or parts.username is not None
        or parts.fragment
        or any(c.isspace() for c in str(value))
    ):
        raise ValueError(f"{where}: must be an {'/'.join(schemes)} URL, got {value!r}")
    return str(value)


@dataclass(frozen=True, kw_only=True)
class VaultKvPath:
    """Where one consumer's KV v2 secret lives, and the names derived from it."""

    mount: str
    """KV v2 mount path, e.g. ``kv`` (no leading or trailing slash)."""
    env: str
    """Stack name, e.g. ``staging`` or ``prod``."""
    consumer: str
    """Consumer name, e.g. ``identity-postgrest`` or ``pgbouncer``."""

    def __post_init__(self) -> None:
        _check(_MOUNT, "VaultKvPath.mount", self.mount, "a Vault mount path like 'kv'")
        _check(_DNS_LABEL, "VaultKvPath.env", self.env, "a DNS label")
        _check(_DNS_LABEL, "VaultKvPath.consumer", self.consumer, "a DNS label")

    @property
    def secret_path(self) -> str:
        """Path inside the mount: ExternalSecret ``remoteRef.key`` and the KV secret name."""
        return f"{KV_PREFIX}/{self.env}/{self.consumer}"

    @property
    def data_path(self) -> str:
        """API path of the secret's data (what ``read`` must be granted on)."""
        return f"{self.mount}/data/{self.secret_path}"

    @property
    def metadata_path(self) -> str:
        return f"{self.mount}/metadata/{self.secret_path}"

    @property
    def policy_name(self) -> str:
        """Name of the consumer's Vault policy and Kubernetes auth role."""
        return f"{KV_PREFIX}-{self.env}-{self.consumer}"


def render_vault_policy(
    mount: str, consumer_path: str, *, allow_metadata_read: bool = False
) -> str:
    """Render the HCL policy granting ``read`` on exactly one KV v2 secret.

    ``consumer_path`` is the path inside the mount (:attr:`VaultKvPath.secret_path`). Glob
    characters are rejected by validation, so the policy cannot reach a sibling path. Metadata
    read (versions, timestamps) is off by default: External Secrets does not need it unless an
    ExternalSecret asks for ``metadataPolicy: Fetch``.
    """
    _check(_MOUNT, "render_vault_policy.mount", mount, "a Vault mount path like 'kv'")
    _check(
        _KV_PATH,
        "render_vault_policy.consumer_path",
        consumer_path,
        "a KV path of [a-z0-9_-] segments without globs, e.g. 'pgplatform/prod/app'",
    )
    paths = [f"{mount}/data/{consumer_path}"]
    if allow_metadata_read:
        paths.append(f"{mount}/metadata/{consumer_path}")
    blocks = [
        f"# Read-only access to the single KV v2 secret {mount}/{consumer_path}; nothing else.",
    ]
    for path in paths:
        blocks += [f'path "{path}" {{', '  capabilities = ["read"]', "}"]
    return "\n".join(blocks) + "\n"


@dataclass(frozen=True, kw_only=True)
class CaRef:
    """A CA bundle in a Secret or ConfigMap of the store's namespace."""

    kind: Literal["Secret", "ConfigMap"]
    name: str
    key: str

    def __post_init__(self) -> None:
        if self.kind not in ("Secret", "ConfigMap"):
            raise ValueError(f"CaRef.kind: must be 'Secret' or 'ConfigMap', got {self.kind!r}")
        _check(_DNS_SUBDOMAIN, "CaRef.name", self.name, "a Kubernetes object name")
        _check(_SECRET_KEY, "CaRef.key", self.key, "a Secret/ConfigMap key")

    def spec(self) -> dict[str, str]:
        return {"type": self.kind, "name": self.name, "key": self.key}


def vault_secret_store_spec(
    *,
    server: str,
    mount: str,
    auth_role: str,
    service_account: str,
    auth_mount_path: str = "kubernetes",
    audiences: Sequence[str] = (),
    ca: CaRef | None = None,
    vault_namespace: str | None = None,
    allow_insecure_http: bool = False,
) -> dict[str, Any]:
    """Return ``spec`` of a ``SecretStore`` reading KV v2 through Vault's Kubernetes auth.

    The store authenticates as ``service_account`` (a token requested on demand, not a mounted
    one), so the Vault role bound to that ServiceAccount decides what it can read: one path.
    """
    _check_url("vault_secret_store_spec.server", server, allow_http=allow_insecure_http)
    _check(_MOUNT, "vault_secret_store_spec.mount", mount, "a Vault mount path like 'kv'")
    _check(_VAULT_ROLE, "vault_secret_store_spec.auth_role", auth_role, "a Vault role name")
    _check(
        _DNS_SUBDOMAIN,
        "vault_secret_store_spec.service_account",
        service_account,
        "a ServiceAccount name",
    )
    _check(_MOUNT, "vault_secret_store_spec.auth_mount_path", auth_mount_path, "a mount path")
    if isinstance(audiences, str):
        raise ValueError("vault_secret_store_spec.audiences: must be a sequence of strings")
    for audience in audiences:
        if not isinstance(audience, str) or not audience or any(c.isspace() for c in audience):
            raise ValueError(f"vault_secret_store_spec.audiences: invalid audience {audience!r}")
    service_account_ref: dict[str, Any] = {"name": service_account}
    if audiences:
        service_account_ref["audiences"] = list(audiences)
    vault: dict[str, Any] = {
        "server": server,
        "path": mount,
        "version": "v2",
        "auth": {
            "kubernetes": {
                "mountPath": auth_mount_path,
                "role": auth_role,
                "serviceAccountRef": service_account_ref,
            }
        },
    }
    if vault_namespace is not None:
        _check(_MOUNT, "vault_secret_store_spec.vault_namespace", vault_namespace, "a namespace")
        vault["namespace"] = vault_namespace
    if ca is not None:
        vault["caProvider"] = ca.spec()
    return {"provider": {"vault": vault}}


@dataclass(frozen=True, kw_only=True)
class SecretKeyRef:
    """One Kubernetes Secret key filled from one field of a remote secret."""

    secret_key: str
    """Key in the target Kubernetes Secret, e.g. ``password``."""
    remote_key: str
    """Remote secret, e.g. :attr:`VaultKvPath.secret_path`."""
    remote_property: str | None = None
    """Field of the remote secret (a KV v2 key); ``None`` takes the whole value."""

    def __post_init__(self) -> None:
        _check(_SECRET_KEY, "SecretKeyRef.secret_key", self.secret_key, "a Secret key")
        if not isinstance(self.remote_key, str) or not self.remote_key.strip():
            raise ValueError(f"SecretKeyRef.remote_key: must be non-empty, got {self.remote_key!r}")
        if self.remote_property is not None:
            _check(_KV_FIELD, "SecretKeyRef.remote_property", self.remote_property, "a field")


_SECRET_TYPE = re.compile(r"^[a-z0-9.-]+(/[A-Za-z0-9.-]+)?$")


def external_secret_spec(
    *,
    store_name: Placed,
    target_secret: str,
    data: Sequence[SecretKeyRef],
    refresh_interval: str = "1h",
    store_kind: StoreKind = "SecretStore",
    creation_policy: CreationPolicy = "Owner",
    secret_labels: Mapping[str, str] | None = None,
    secret_type: str | None = None,
) -> dict[str, Any]:
    """Return ``spec`` of an ``ExternalSecret`` syncing ``data`` into ``target_secret``.

    ``secret_type`` sets the produced Secret's ``type`` (e.g. ``kubernetes.io/basic-auth``,
    which CloudNativePG expects for role credentials).

    ``deletionPolicy: Retain`` keeps the last good Secret when the source reports the secret
    missing, so a provider hiccup cannot delete the credentials a running pod relies on.
    """
    where = "external_secret_spec"
    if isinstance(store_name, str):  # else a reference to a generated name, placed as is
        _check(_DNS_SUBDOMAIN, f"{where}.store_name", store_name, "a Kubernetes object name")
    _check(_DNS_SUBDOMAIN, f"{where}.target_secret", target_secret, "a Kubernetes object name")
    if store_kind not in ("SecretStore", "ClusterSecretStore"):
        raise ValueError(f"{where}.store_kind: must be SecretStore/ClusterSecretStore")
    if creation_policy not in ("Owner", "Orphan", "Merge"):
        raise ValueError(f"{where}.creation_policy: must be Owner, Orphan or Merge")
    _check_interval(f"{where}.refresh_interval", refresh_interval, minimum=60, maximum=86400)
    if not data:
        raise ValueError(f"{where}.data: needs at least one SecretKeyRef")
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    for item in data:
        if not isinstance(item, SecretKeyRef):
            raise ValueError(f"{where}.data: items must be SecretKeyRef, got {item!r}")
        if item.secret_key in seen:
            raise ValueError(f"{where}.data: duplicate secret_key {item.secret_key!r}")
        seen.add(item.secret_key)
        remote: dict[str, str] = {"key": item.remote_key}
        if item.remote_property is not None:
            remote["property"] = item.remote_property
        entries.append({"secretKey": item.secret_key, "remoteRef": remote})
    target: dict[str, Any] = {
        "name": target_secret,
        "creationPolicy": creation_policy,
        "deletionPolicy": "Retain",
    }
    if secret_labels:
        for key, value in secret_labels.items():
            _check(_LABEL_KEY, f"{where}.secret_labels", key, "a label key")
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(f"{where}.secret_labels[{key!r}]: invalid label value {value!r}")
        target["template"] = {"metadata": {"labels": dict(secret_labels)}}
    if secret_type is not None:
        _check(_SECRET_TYPE, f"{where}.secret_type", secret_type, "a Secret type")
        target.setdefault("template", {})["type"] = secret_type
    return {
        "refreshInterval": refresh_interval,
        "secretStoreRef": {"kind": store_kind, "name": store_name},
        "target": target,
        "data": entries,
    }


def jwks_secret_store_spec(
    *, jwks_url: str, timeout: str = "10s", ca: CaRef | None = None
) -> dict[str, Any]:
    """Return ``spec`` of a ``SecretStore`` whose ``webhook`` provider GETs the IdP's JWKS.

    ``result.jsonPath: "$"`` makes the operator parse the body as JSON and store it re-encoded:
    an HTML error page served with status 200 fails the sync (the Secret keeps the last good
    key set) instead of replacing the keys PostgREST verifies with.
    """
    _check_url("jwks_secret_store_spec.jwks_url", jwks_url, allow_http=False)
    if "{{" in jwks_url or "}}" in jwks_url:
        raise ValueError("jwks_secret_store_spec.jwks_url: must not contain template braces")
    _check_interval("jwks_secret_store_spec.timeout", timeout, minimum=1, maximum=60)
    webhook: dict[str, Any] = {
        "url": jwks_url,
        "method": "GET",
        "headers": {"Accept": "application/json"},
        "timeout": timeout,
        "result": {"jsonPath": "$"},
    }
    if ca is not None:
        webhook["caProvider"] = ca.spec()
    return {"provider": {"webhook": webhook}}


def jwks_external_secret_spec(
    *,
    store_name: Placed,
    target_secret: str,
    refresh_interval: str = "15m",
    secret_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return ``spec`` of the ``ExternalSecret`` writing the JWKS into key ``jwks.json``.

    15 minutes bounds how long a key the IdP has removed stays trusted; identity providers
    publish a new signing key well before they sign with it, so a new key arrives in time.
    """
    return external_secret_spec(
        store_name=store_name,
        target_secret=target_secret,
        data=[SecretKeyRef(secret_key=JWKS_FILE_KEY, remote_key="jwks")],
        refresh_interval=refresh_interval,
        secret_labels=secret_labels,
    )
