"""Bad domain API input: each error names its ``pgplatform:`` key, also through the render CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from components.settings import SettingsError, parse_settings
from tools.render import render_in_subprocess

pytestmark = pytest.mark.unit

STAGING: dict[str, Any] = {
    "publicBaseUrl": "https://api.staging.example.com",
    "auth": {"audience": "pgplatform-staging"},
    "domains": {"identity": {}, "content": {}, "analytics": {"readFromReplicas": True}},
}
PROD: dict[str, Any] = {
    "publicBaseUrl": "https://api.example.com",
    "auth": {"audience": "pgplatform", "jwksUrl": "https://id.example.com/jwks.json"},
    "domains": {"identity": {}, "content": {}, "analytics": {"readFromReplicas": True}},
    "backup": {"destinationPath": "s3://backups/pg", "credentialsSecret": "backup-s3"},
}


def problems(stack: str, raw: dict[str, Any], secrets: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw, secrets)
    return [str(p) for p in caught.value.problems]


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


@pytest.mark.parametrize(("stack", "raw"), [("staging", STAGING), ("prod", PROD)])
def test_bases_are_valid(stack: str, raw: dict[str, Any]) -> None:
    assert parse_settings(stack, raw).environment == stack


@pytest.mark.parametrize(
    ("stack", "path", "value", "key", "hint"),
    [
        ("staging", "auth.mode", "oauth", "auth.mode", "'hs256' or 'jwks'"),
        ("staging", "auth.roleClaimKey", "$.role", "auth.roleClaimKey", "v16 syntax"),
        ("staging", "auth.roleClaimKey", ".roles[x]", "auth.roleClaimKey", "invalid at offset"),
        (
            "staging",
            "auth.roleClaimKey",
            '.groups[?(@ == "a")].x',
            "auth.roleClaimKey",
            "filter must be the last step",
        ),
        (
            "prod",
            "domains.content.replicas",
            {"min": 6, "max": 3},
            "domains.content.replicas",
            "min (6) must be <= max (3)",
        ),
        ("staging", "domains.content.cpuTarget", 99, "domains.content.cpuTarget", "less than"),
        ("staging", "domains.content.rpsTarget", 0, "domains.content.rpsTarget", "greater than"),
        ("staging", "domains.content.logLevel", "trace", "domains.content.logLevel", "'crit'"),
        ("staging", "vault.refreshInterval", "10s", "vault.refreshInterval", "1m..24h"),
        ("staging", "vault.address", "http://vault:8200", "vault.address", "https"),
        (
            "staging",
            "gateway.forwardAuthName",
            "auth",
            "gateway",
            "forwardAuthGroup, forwardAuthKind and forwardAuthName go together",
        ),
    ],
)
def test_bad_value_names_its_key(stack: str, path: str, value: Any, key: str, hint: str) -> None:
    found = problems(stack, changed(STAGING if stack == "staging" else PROD, path, value))
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in found), found


def test_prod_without_jwks_url_names_the_key() -> None:
    raw = copy.deepcopy(PROD)
    del raw["auth"]["jwksUrl"]
    found = problems("prod", raw)
    assert any(p.startswith("pgplatform:auth.jwksUrl: required") for p in found), found


@pytest.mark.parametrize("name", ["platform", "audit", "api_things", "pg_data", "postgrest"])
def test_reserved_domain_name_names_the_key(name: str) -> None:
    raw = copy.deepcopy(STAGING)
    raw["domains"][name] = {}
    found = problems("staging", raw)
    assert any(p.startswith(f"pgplatform:domains.{name}:") and "reserved" in p for p in found)


@pytest.mark.parametrize("name", ["_billing", "billing_"])
def test_domain_name_must_give_a_kubernetes_name(name: str) -> None:
    raw = copy.deepcopy(STAGING)
    raw["domains"][name] = {}
    found = problems("staging", raw)
    assert any(
        p.startswith(f"pgplatform:domains.{name}:") and "Kubernetes objects" in p for p in found
    ), found
    del raw["domains"][name]
    raw["domains"]["billing_v2"] = {}
    assert "billing_v2" in parse_settings("staging", raw).domains


def test_jwt_secret_rules() -> None:
    short = changed(STAGING, "jwtSecret", "too-short")
    found = problems("staging", short, ("jwtSecret",))
    assert found == [
        "pgplatform:jwtSecret: PostgREST needs at least 32 characters (48+ recommended)"
    ]
    assert not any("too-short" in p for p in found)
    unused = changed(PROD, "jwtSecret", "x" * 64)
    found = problems("prod", unused, ("jwtSecret",))
    assert any(
        p.startswith("pgplatform:jwtSecret: only used with auth.mode 'hs256'") for p in found
    )
    plain = problems("staging", changed(STAGING, "jwtSecret", "y" * 64))
    assert any("--secret pgplatform:jwtSecret" in p for p in plain)


def test_render_cli_reports_domain_errors(tmp_path: Path) -> None:
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(
        "config:\n"
        "  pgplatform:publicBaseUrl: https://api.example.com\n"
        "  pgplatform:auth: {audience: x, roleClaimKey: role}\n"
        "  pgplatform:domains: {identity: {replicas: {min: 1, max: 2}}, billing_: {}}\n"
        "  pgplatform:backup: {destinationPath: 's3://b/p', credentialsSecret: s}\n"
    )
    result = render_in_subprocess("prod", tmp_path / "out", stack_file)
    assert result.returncode == 2, result.stderr
    for key in (
        "pgplatform:auth.jwksUrl",
        "pgplatform:auth.roleClaimKey",
        "pgplatform:domains.identity.replicas.min",
        "pgplatform:domains.billing_",
    ):
        assert key in result.stderr, (key, result.stderr)
    assert "Traceback" not in result.stderr
