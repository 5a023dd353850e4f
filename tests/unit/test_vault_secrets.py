"""VaultSecrets under mocks, and the checksum / wait-for-secrets builders it relies on."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pytest

from components.render.secret_sync import (
    CHECKSUM_KEY,
    SECRETS_CHECKSUM_ANNOTATION,
    WAIT_SCRIPT,
    values_checksum,
    wait_for_secret_container,
)
from components.render.secrets import VaultKvPath
from components.settings import VaultSettings
from components.vault_secrets import (
    VAULT_AUDIENCE,
    VaultConsumer,
    VaultSecrets,
    VaultSecretsArgs,
)
from tools import mocks as recording
from tools.mocks import RecordingMocks, is_secret

pytestmark = pytest.mark.unit

VAULT = VaultSettings.model_validate(
    {
        "address": "https://vault.example.com:8200",
        "kvMount": "secret",
        "kubernetesAuthPath": "k8s-prod",
        "refreshInterval": "30m",
    }
)
KEY = "k" * 48


def build(
    install: Callable[..., RecordingMocks], values: Mapping[str, Mapping[str, str]]
) -> RecordingMocks:
    mocks = install("prod", {})
    VaultSecrets(
        "vs",
        VaultSecretsArgs(
            namespace="pgplatform",
            env="prod",
            vault=VAULT,
            consumers=tuple(
                VaultConsumer(
                    name=name,
                    service_account=f"{name}-sa",
                    values={k: pulumi.Output.secret(v) for k, v in vals.items()},
                )
                for name, vals in values.items()
            ),
            labels={"app.kubernetes.io/name": "test"},
        ),
    )
    recording.settle()
    return mocks


def one(mocks: RecordingMocks, type_token: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in mocks.by_type(type_token) if r.name == name]
    return found.inputs


def checksum_key(mocks: RecordingMocks, consumer: str) -> str:
    (salt,) = [
        r
        for r in mocks.by_type("random:index/randomPassword:RandomPassword")
        if r.name == f"vs-{consumer}-checksum-key"
    ]
    assert salt.inputs["length"] >= 32
    return str(salt.outputs["result"]["value"])


VALUES = {
    "identity-postgrest": {"password": "pw-identity-0123456789", "jwt_secret": "j" * 40},
    "pgbouncer": {"password": "pw-pgbouncer-0123456789"},
}


def test_each_consumer_reads_only_its_own_path(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = build(pulumi_mocks, VALUES)
    for consumer, values in VALUES.items():
        path = VaultKvPath(mount="secret", env="prod", consumer=consumer)
        kv = one(mocks, "vault:kv/secretV2:SecretV2", f"vs-{consumer}-kv")
        assert (kv["mount"], kv["name"]) == ("secret", f"pgplatform/prod/{consumer}")
        assert kv["deleteAllVersions"] is True
        assert is_secret(kv["dataJson"])
        data = json.loads(kv["dataJson"]["value"])
        assert set(data) == {*values, CHECKSUM_KEY}
        assert data[CHECKSUM_KEY] == values_checksum(checksum_key(mocks, consumer), values)

        policy = one(mocks, "vault:index/policy:Policy", f"vs-{consumer}-policy")
        assert policy["name"] == path.policy_name
        grants = [line for line in policy["policy"].splitlines() if line.startswith("path ")]
        assert grants == [f'path "secret/data/pgplatform/prod/{consumer}" {{']

        role = one(mocks, "vault:kubernetes/authBackendRole:AuthBackendRole", f"vs-{consumer}-role")
        assert role["backend"] == "k8s-prod"
        assert role["roleName"] == path.policy_name
        assert role["boundServiceAccountNames"] == [f"{consumer}-sa"]
        assert role["boundServiceAccountNamespaces"] == ["pgplatform"]
        assert role["tokenPolicies"] == [path.policy_name]
        assert role["audience"] == VAULT_AUDIENCE

        store = one(mocks, "kubernetes:external-secrets.io/v1:SecretStore", f"vs-{consumer}-store")
        vault = store["spec"]["provider"]["vault"]
        assert (vault["server"], vault["path"], vault["version"]) == (
            "https://vault.example.com:8200",
            "secret",
            "v2",
        )
        auth = vault["auth"]["kubernetes"]
        assert auth["role"] == path.policy_name
        assert auth["mountPath"] == "k8s-prod"
        assert auth["serviceAccountRef"] == {"name": f"{consumer}-sa", "audiences": ["vault"]}


def test_external_secret_per_consumer(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = build(pulumi_mocks, VALUES)
    stores = {
        r.name: r.outputs["metadata"]["name"]
        for r in mocks.by_type("kubernetes:external-secrets.io/v1:SecretStore")
    }
    for consumer, values in VALUES.items():
        es = one(
            mocks, "kubernetes:external-secrets.io/v1:ExternalSecret", f"vs-{consumer}-external"
        )
        spec = es["spec"]
        assert spec["refreshInterval"] == "30m"
        assert spec["target"]["name"] == f"{consumer}-secrets"
        assert spec["secretStoreRef"] == {
            "kind": "SecretStore",
            "name": stores[f"vs-{consumer}-store"],
        }
        assert {d["secretKey"]: d["remoteRef"] for d in spec["data"]} == {
            key: {"key": f"pgplatform/prod/{consumer}", "property": key}
            for key in [*values, CHECKSUM_KEY]
        }
        checksum = values_checksum(checksum_key(mocks, consumer), values)
        assert es["metadata"]["annotations"] == {SECRETS_CHECKSUM_ANNOTATION: checksum}
    # Nothing but the KV data carries a value.
    plain = json.dumps(
        [r.inputs for r in mocks.resources if r.type != "vault:kv/secretV2:SecretV2"]
    )
    for values in VALUES.values():
        assert not any(v in plain for v in values.values())


def test_checksum_follows_the_values(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    def annotation(values: Mapping[str, Mapping[str, str]]) -> str:
        mocks = build(pulumi_mocks, values)
        es = one(
            mocks,
            "kubernetes:external-secrets.io/v1:ExternalSecret",
            "vs-identity-postgrest-external",
        )
        return str(es["metadata"]["annotations"][SECRETS_CHECKSUM_ANNOTATION])

    base = {"identity-postgrest": {"password": "a" * 20}}
    assert annotation(base) == annotation(base)
    assert annotation(base) != annotation({"identity-postgrest": {"password": "b" * 20}})


def test_values_checksum_is_keyed_and_canonical() -> None:
    values = {"password": "hunter2", "jwt_secret": "x"}
    reordered = {"jwt_secret": "x", "password": "hunter2"}
    assert values_checksum(KEY, values) == values_checksum(KEY, reordered)
    assert values_checksum(KEY, values) != values_checksum("q" * 48, values)
    assert values_checksum(KEY, values) != values_checksum(KEY, {**values, "password": "hunter3"})
    # Knowing the algorithm but not the key, a low-entropy value cannot be confirmed.
    import hashlib

    for candidate in ("hunter2", json.dumps(values, sort_keys=True, separators=(",", ":"))):
        assert hashlib.sha256(candidate.encode()).hexdigest() != values_checksum(KEY, values)
    for bad_key, bad_values, message in [
        ("short", values, "at least 32"),
        (KEY, {}, "at least one"),
        (KEY, {CHECKSUM_KEY: "x"}, "reserved"),
        (KEY, {"bad key": "x"}, "not a Secret key"),
    ]:
        with pytest.raises(ValueError, match=message):
            values_checksum(bad_key, bad_values)


@pytest.mark.parametrize(
    ("actual", "expected", "code"),
    [("abc", "abc", 0), ("old", "new", 1), ("", "", 1), (None, "new", 1)],
)
def test_wait_script_passes_only_on_a_match(actual: str | None, expected: str, code: int) -> None:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX sh on this machine: install the 'dash' package")
    env = {"SECRET_NAME": "s", "EXPECTED_CHECKSUM": expected, "PATH": "/usr/bin:/bin"}
    if actual is not None:
        env["ACTUAL_CHECKSUM"] = actual
    script = WAIT_SCRIPT.replace("sleep 5", "sleep 0")
    result = subprocess.run([sh, "-c", script], env=env, capture_output=True, check=False)
    assert result.returncode == code, result.stderr


def test_wait_container_shape() -> None:
    container = wait_for_secret_container(
        "identity-postgrest-secrets",
        image="docker.io/library/busybox:1.37.0",
        security_context={"runAsNonRoot": True},
    )
    assert container["command"] == ["sh", "-c", WAIT_SCRIPT]
    assert "sleep 5" in WAIT_SCRIPT
    assert container["securityContext"] == {"runAsNonRoot": True}
    with pytest.raises(ValueError, match="pin a version"):
        wait_for_secret_container("s", image="busybox:latest", security_context={})
    with pytest.raises(ValueError, match="secret_name"):
        wait_for_secret_container("Bad_Name", image="busybox:1", security_context={})


def _consumer(**overrides: Any) -> VaultConsumer:
    values: dict[str, Any] = {"name": "app", "service_account": "sa", "values": {"password": "p"}}
    values.update(overrides)
    return VaultConsumer(**values)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Bad_Name"}, "VaultConsumer.name"),
        ({"values": {}}, "VaultConsumer.values"),
        ({"values": {CHECKSUM_KEY: "x"}}, "reserved"),
        ({"values": {"bad key": "x"}}, "VaultConsumer.values"),
    ],
)
def test_consumer_errors_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _consumer(**overrides)


def test_args_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="duplicate consumer names"):
        VaultSecretsArgs(
            namespace="ns", env="prod", vault=VAULT, consumers=(_consumer(), _consumer())
        )
    with pytest.raises(ValueError, match="consumers"):
        VaultSecretsArgs(namespace="ns", env="prod", vault=VAULT, consumers=())
    fast = VAULT.model_copy(update={"refresh_interval": "10s"})
    with pytest.raises(ValueError, match="refresh_interval"):
        VaultSecretsArgs(namespace="ns", env="prod", vault=fast, consumers=(_consumer(),))
