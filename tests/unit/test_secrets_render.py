"""Vault policy / KV layout and External Secrets specs, validated against the served v1 CRDs."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from components.render.secrets import (
    EXTERNAL_SECRETS_API_VERSION,
    JWKS_FILE_KEY,
    CaRef,
    SecretKeyRef,
    VaultKvPath,
    external_secret_spec,
    go_duration_seconds,
    jwks_external_secret_spec,
    jwks_secret_store_spec,
    render_vault_policy,
    vault_secret_store_spec,
)
from tests.crd_schema import CrdValidationError, load_crd_validator

pytestmark = pytest.mark.unit

GROUP = "external-secrets.io"
IDENTITY = VaultKvPath(mount="kv", env="prod", consumer="identity-postgrest")
_PATH_BLOCK = re.compile(r'path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]\n\}')


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": EXTERNAL_SECRETS_API_VERSION,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "pgplatform",
            "labels": {"app.kubernetes.io/part-of": "pgplatform"},
        },
        "spec": spec,
    }


def policy_grants(hcl: str) -> dict[str, list[str]]:
    """Parse the rendered policy into path -> capabilities; fail on anything unparsed."""
    grants = {m.group(1): re.findall(r'"([^"]+)"', m.group(2)) for m in _PATH_BLOCK.finditer(hcl)}
    rest = _PATH_BLOCK.sub("", hcl)
    assert all(not line or line.startswith("#") for line in rest.splitlines()), rest
    return grants


def vault_store() -> dict[str, Any]:
    return vault_secret_store_spec(
        server="https://vault.example.com:8200",
        mount=IDENTITY.mount,
        auth_role=IDENTITY.policy_name,
        service_account="identity-postgrest-secrets",
        audiences=("vault",),
        ca=CaRef(kind="ConfigMap", name="vault-ca", key="ca.crt"),
    )


def identity_external_secret() -> dict[str, Any]:
    key = IDENTITY.secret_path
    return external_secret_spec(
        store_name="identity-postgrest-vault",
        target_secret="identity-postgrest-db",
        data=[
            SecretKeyRef(secret_key="password", remote_key=key, remote_property="password"),
            SecretKeyRef(secret_key="jwt-secret", remote_key=key, remote_property="jwt_secret"),
        ],
        refresh_interval="30m",
        secret_labels={"app.kubernetes.io/part-of": "pgplatform"},
    )


def test_kv_layout_per_consumer() -> None:
    assert IDENTITY.secret_path == "pgplatform/prod/identity-postgrest"
    assert IDENTITY.data_path == "kv/data/pgplatform/prod/identity-postgrest"
    assert IDENTITY.metadata_path == "kv/metadata/pgplatform/prod/identity-postgrest"
    assert IDENTITY.policy_name == "pgplatform-prod-identity-postgrest"


@pytest.mark.parametrize(
    ("field", "value"),
    [("mount", "/kv"), ("mount", "kv/*"), ("env", "Prod"), ("consumer", "a/b"), ("consumer", "x*")],
)
def test_kv_path_rejects_bad_names(field: str, value: str) -> None:
    args = {"mount": "kv", "env": "prod", "consumer": "identity-postgrest", field: value}
    with pytest.raises(ValueError, match=rf"^VaultKvPath\.{field}: "):
        VaultKvPath(**args)


def test_policy_grants_read_on_exactly_its_own_path() -> None:
    grants = policy_grants(render_vault_policy(IDENTITY.mount, IDENTITY.secret_path))
    assert grants == {IDENTITY.data_path: ["read"]}


def test_policy_metadata_read_is_opt_in() -> None:
    hcl = render_vault_policy(IDENTITY.mount, IDENTITY.secret_path, allow_metadata_read=True)
    assert policy_grants(hcl) == {IDENTITY.data_path: ["read"], IDENTITY.metadata_path: ["read"]}


def test_policies_of_two_consumers_do_not_overlap() -> None:
    other = VaultKvPath(mount="kv", env="prod", consumer="identity-postgrest-2")
    mine = policy_grants(render_vault_policy(IDENTITY.mount, IDENTITY.secret_path))
    theirs = policy_grants(render_vault_policy(other.mount, other.secret_path))
    assert not set(mine) & set(theirs)
    assert all("*" not in path and "+" not in path for path in (*mine, *theirs))


@pytest.mark.parametrize(
    ("mount", "consumer_path", "field"),
    [
        ("kv", "pgplatform/prod/*", "consumer_path"),
        ("kv", "pgplatform/+/identity", "consumer_path"),
        ("kv", "pgplatform/../other", "consumer_path"),
        ("kv", "pgplatform//identity", "consumer_path"),
        ("kv", "/pgplatform/prod/identity", "consumer_path"),
        ("kv", 'pgplatform/prod/x" {}', "consumer_path"),
        ("kv/", "pgplatform/prod/identity", "mount"),
        ("k v", "pgplatform/prod/identity", "mount"),
    ],
)
def test_policy_rejects_globs_and_escapes(mount: str, consumer_path: str, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^render_vault_policy\.{field}: "):
        render_vault_policy(mount, consumer_path)


def test_vault_secret_store_is_a_valid_v1_secretstore() -> None:
    spec = vault_store()
    load_crd_validator(GROUP, "SecretStore", "v1")(resource("SecretStore", "identity-vault", spec))
    vault = spec["provider"]["vault"]
    assert vault["version"] == "v2"
    assert vault["path"] == "kv"
    kubernetes = vault["auth"]["kubernetes"]
    assert kubernetes["role"] == "pgplatform-prod-identity-postgrest"
    assert kubernetes["serviceAccountRef"] == {
        "name": "identity-postgrest-secrets",
        "audiences": ["vault"],
    }


def test_vault_secret_store_requires_https_unless_relaxed() -> None:
    with pytest.raises(ValueError, match=r"^vault_secret_store_spec\.server: "):
        vault_secret_store_spec(
            server="http://vault:8200", mount="kv", auth_role="r", service_account="sa"
        )
    spec = vault_secret_store_spec(
        server="http://vault:8200",
        mount="kv",
        auth_role="r",
        service_account="sa",
        allow_insecure_http=True,
    )
    load_crd_validator(GROUP, "SecretStore", "v1")(resource("SecretStore", "dev", spec))


def test_external_secret_is_a_valid_v1_externalsecret() -> None:
    spec = identity_external_secret()
    load_crd_validator(GROUP, "ExternalSecret", "v1")(resource("ExternalSecret", "identity", spec))
    assert spec["refreshInterval"] == "30m"
    assert spec["secretStoreRef"] == {"kind": "SecretStore", "name": "identity-postgrest-vault"}
    assert spec["target"]["name"] == "identity-postgrest-db"
    assert spec["target"]["deletionPolicy"] == "Retain"
    assert spec["data"][0] == {
        "secretKey": "password",
        "remoteRef": {"key": "pgplatform/prod/identity-postgrest", "property": "password"},
    }


def test_jwks_store_and_external_secret_are_valid_v1() -> None:
    store = jwks_secret_store_spec(jwks_url="https://idp.example.com/realms/main/certs")
    load_crd_validator(GROUP, "SecretStore", "v1")(resource("SecretStore", "idp-jwks", store))
    webhook = store["provider"]["webhook"]
    assert webhook["method"] == "GET"
    assert webhook["result"] == {"jsonPath": "$"}
    ext = jwks_external_secret_spec(store_name="idp-jwks", target_secret="postgrest-jwks")
    load_crd_validator(GROUP, "ExternalSecret", "v1")(resource("ExternalSecret", "jwks", ext))
    assert ext["data"] == [{"secretKey": JWKS_FILE_KEY, "remoteRef": {"key": "jwks"}}]
    assert ext["refreshInterval"] == "15m"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://idp.example.com/certs", "jwks_url"),
        ("https://idp.example.com/{{.remoteRef.key}}", "template braces"),
        ("not a url", "jwks_url"),
    ],
)
def test_jwks_store_rejects_unsafe_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        jwks_secret_store_spec(jwks_url=url)


def test_unknown_field_is_rejected_with_its_path() -> None:
    validate = load_crd_validator(GROUP, "ExternalSecret", "v1")
    obj = resource("ExternalSecret", "identity", identity_external_secret())
    bad = copy.deepcopy(obj)
    bad["spec"]["data"][0]["remoteRef"]["kye"] = "typo"
    with pytest.raises(CrdValidationError, match=r"spec\.data\[0\]\.remoteRef: .*'kye'"):
        validate(bad)
    bad_meta = copy.deepcopy(obj)
    bad_meta["metadata"]["lables"] = {}
    with pytest.raises(CrdValidationError, match=r"metadata: .*'lables'"):
        validate(bad_meta)
    validate(obj)  # the untouched object still passes


def test_wrong_type_and_wrong_api_version_are_rejected() -> None:
    validate = load_crd_validator(GROUP, "SecretStore", "v1")
    obj = resource("SecretStore", "identity-vault", vault_store())
    wrong_type = copy.deepcopy(obj)
    wrong_type["spec"]["provider"]["vault"]["version"] = "v3"
    with pytest.raises(CrdValidationError, match=r"spec\.provider\.vault\.version: "):
        validate(wrong_type)
    old = {**obj, "apiVersion": "external-secrets.io/v1beta1"}
    with pytest.raises(CrdValidationError, match="apiVersion: expected"):
        validate(old)
    with pytest.raises(LookupError, match="not served"):
        load_crd_validator(GROUP, "SecretStore", "v1beta1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refresh_interval": "30s"}, "refresh_interval"),
        ({"refresh_interval": "2d"}, "refresh_interval"),
        ({"refresh_interval": "25h"}, "refresh_interval"),
        ({"store_name": "Vault_Store"}, "store_name"),
        ({"target_secret": "x" * 254}, "target_secret"),
        ({"data": []}, "data"),
        ({"secret_labels": {"bad key!": "x"}}, "secret_labels"),
        ({"secret_labels": {"ok": "bad value!"}}, "secret_labels"),
    ],
)
def test_external_secret_rejects_bad_input(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "store_name": "store",
        "target_secret": "target",
        "data": [SecretKeyRef(secret_key="password", remote_key="pgplatform/prod/x")],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^external_secret_spec\.{match}"):
        external_secret_spec(**args)


def test_external_secret_rejects_duplicate_keys() -> None:
    ref = SecretKeyRef(secret_key="password", remote_key="pgplatform/prod/x")
    with pytest.raises(ValueError, match="duplicate secret_key"):
        external_secret_spec(store_name="s", target_secret="t", data=[ref, ref])


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("secret_key", {"secret_key": "pass word", "remote_key": "k"}),
        ("remote_key", {"secret_key": "password", "remote_key": " "}),
        ("remote_property", {"secret_key": "p", "remote_key": "k", "remote_property": "a b"}),
    ],
)
def test_secret_key_ref_names_the_field(field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=rf"^SecretKeyRef\.{field}: "):
        SecretKeyRef(**kwargs)


@pytest.mark.parametrize(
    ("value", "seconds"), [("15m", 900.0), ("1h30m", 5400.0), ("1h0m0s", 3600.0), ("1.5s", 1.5)]
)
def test_go_duration_seconds(value: str, seconds: float) -> None:
    assert go_duration_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "15", "1d", "m15", "1 h"])
def test_go_duration_rejects_non_go_syntax(value: str) -> None:
    with pytest.raises(ValueError, match="Go duration"):
        go_duration_seconds(value)
