"""What holds data is protected from deletion per stack, and lifting that is one config key."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from components.settings import SettingsError, decode_config_value, parse_settings
from tests.conftest import run_program, stack_config
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
OBJECT_STORE = "kubernetes:barmancloud.cnpg.io/v1:ObjectStore"
KV = "vault:kv/secretV2:SecretV2"
SCHEMA = "postgresql:index/schema:Schema"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"

SCHEMAS = {
    (SCHEMA, f"access-schema-{name}")
    for name in ("platform", "audit", "identity", "content", "analytics", "billing")
}
# The Vault KV entries of the committed stacks: the admin credentials, each API's, PgBouncer's
# (and the GraphQL pilot's where it is on).
KV_ENTRIES = {
    (KV, name)
    for name in (
        "postgres-admin-postgres-admin-kv",
        "identity-api-vault-identity-postgrest-kv",
        "content-api-vault-content-postgrest-kv",
        "analytics-api-vault-analytics-postgrest-kv",
        "billing-api-vault-billing-postgrest-kv",
        "pgbouncer-vault-pgbouncer-kv",
    )
}
PROD_PROTECTED = {
    (CLUSTER, "postgres-cluster"),
    (OBJECT_STORE, "postgres-backup-store"),
    (CLAIM, "audit-export-spool"),
    *KV_ENTRIES,
    *SCHEMAS,
}


def protected(mocks: RecordingMocks) -> set[tuple[str, str]]:
    """(type, logical name) of every resource registered with ``protect``."""
    return {(r.type, r.name) for r in mocks.resources if r.protect}


def with_keys(stack: str, **keys: str) -> tuple[dict[str, str], list[str]]:
    config, secrets = stack_config(stack)
    return {**config, **{f"pgplatform:{k}": v for k, v in keys.items()}}, secrets


def test_prod_protects_exactly_what_holds_data(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "prod")
    assert protected(mocks) == PROD_PROTECTED
    # Forget rather than delete wherever it is protected, and nowhere else.
    assert {(r.type, r.name) for r in mocks.resources if r.retain_on_delete} == PROD_PROTECTED


def test_staging_protects_nothing_by_default(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    assert protected(mocks) == set()
    assert not any(r.retain_on_delete for r in mocks.resources)


def test_prod_lifts_protection_only_by_its_key(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    config, secrets = with_keys("prod", protectData="false")
    mocks = run_program(pulumi_mocks, "prod", config, secrets)
    assert protected(mocks) == set()
    assert not any(r.retain_on_delete for r in mocks.resources)


def test_staging_can_opt_in(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    config, secrets = with_keys("staging", protectData="true")
    mocks = run_program(pulumi_mocks, "staging", config, secrets)
    found = protected(mocks)
    # Staging keeps no backups (no ObjectStore) and runs the GraphQL pilot (one more KV entry).
    assert (CLUSTER, "postgres-cluster") in found
    assert found >= SCHEMAS
    assert {t for t, _ in found} == {CLUSTER, KV, SCHEMA, CLAIM}
    assert len([n for t, n in found if t == KV]) == len(
        [r for r in mocks.resources if r.type == KV]
    )


def test_protect_data_must_be_a_boolean() -> None:
    config, secrets = stack_config("prod")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["protectData"] = "sometimes"
    with pytest.raises(SettingsError) as error:
        parse_settings("prod", raw, [k.split(":", 1)[1] for k in secrets])
    assert [p.path for p in error.value.problems] == ["pgplatform:protectData"]
