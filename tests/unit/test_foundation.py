"""The whole program under mocks: inventory per stack and the database security invariants."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from components import inputs
from components.render.access import AUTHENTICATOR, render_access_sql
from components.settings import decode_config_value, parse_settings
from tests.conftest import run_program, stack_config
from tools.mocks import RecordingMocks, is_secret, redact
from tools.render import render_in_subprocess

pytestmark = pytest.mark.unit

ROLE = "postgresql:index/role:Role"
GRANT_ROLE = "postgresql:index/grantRole:GrantRole"
GRANT = "postgresql:index/grant:Grant"
DEFAULT_PRIVILEGES = "postgresql:index/defaultPrivileges:DefaultPrivileges"
CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"


@pytest.fixture(params=["staging", "prod"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _roles(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {r.inputs["name"]: r.inputs for r in mocks.by_type(ROLE)}


def test_smoke_every_stack_builds(pulumi_mocks: Callable[..., RecordingMocks], stack: str) -> None:
    mocks = run_program(pulumi_mocks, stack)
    types = {r.type for r in mocks.resources}
    assert {
        "pgplatform:index:ManagedPostgres",
        "pgplatform:index:DatabaseAccess",
        CLUSTER,
        ROLE,
        GRANT_ROLE,
    } <= types
    # Every child of a component was captured, not just the components.
    assert all(r.parent for r in mocks.resources)


def test_cluster_instances_per_environment(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    (cluster,) = mocks.by_type(CLUSTER)
    spec = cluster.inputs["spec"]
    assert spec["instances"] == {"staging": 2, "prod": 3}[stack]
    assert spec["enableSuperuserAccess"] is False
    assert spec["enablePDB"] is True
    assert spec["postgresql"]["pg_hba"] == ["hostssl all all all scram-sha-256"]
    assert "pg_stat_statements" in spec["postgresql"]["shared_preload_libraries"]
    # The Cluster names the Secret the admin credentials' ExternalSecret (from Vault) produces.
    admin = [
        r
        for r in mocks.by_type("kubernetes:external-secrets.io/v1:ExternalSecret")
        if r.inputs["spec"]["target"]["name"] == spec["bootstrap"]["initdb"]["secret"]["name"]
    ]
    assert len(admin) == 1
    assert admin[0].inputs["spec"]["target"]["template"]["type"] == "kubernetes.io/basic-auth"
    # No Kubernetes Secret with a literal value is registered anywhere.
    assert not mocks.by_type("kubernetes:core/v1:Secret")


def test_authenticator_is_locked_down(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    auth = _roles(mocks)[AUTHENTICATOR]
    assert auth["login"] is True
    assert auth["inherit"] is False
    for flag in ("superuser", "bypassRowLevelSecurity", "createRole", "createDatabase"):
        assert auth[flag] is False, flag
    assert is_secret(auth["password"])
    (password,) = [
        r
        for r in mocks.by_type("random:index/randomPassword:RandomPassword")
        if r.name.endswith(f"{AUTHENTICATOR}-password")
    ]
    assert password.inputs["length"] >= 32


def test_authenticator_members_exactly_the_api_roles(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    granted = {
        r.inputs["grantRole"]
        for r in mocks.by_type(GRANT_ROLE)
        if r.inputs["role"] == AUTHENTICATOR
    }
    graphql = {
        r.inputs["grantRole"]
        for r in mocks.by_type(GRANT_ROLE)
        if r.inputs["role"] == "postgraphile"
    }
    # The GraphQL pilot's authenticator exists where the pilot runs (staging) and mirrors postgrest.
    assert graphql == (granted if stack == "staging" else set())
    expected = {"api_user", "api_editor", "api_admin", "api_service_cms"}
    if stack == "staging":
        expected |= {"api_anonymous", "api_service_ingest", "api_service_support"}
    assert granted == expected
    assert all(not r.inputs["withAdminOption"] for r in mocks.by_type(GRANT_ROLE))
    no_login = {n for n, r in _roles(mocks).items() if n.startswith("api_")}
    assert all(_roles(mocks)[n]["login"] is False for n in no_login)


def test_statement_timeouts_per_role(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "prod")
    roles = _roles(mocks)
    assert roles["api_user"]["statementTimeout"] == 5000
    assert roles["api_service_cms"]["statementTimeout"] == 20000  # stack override


def test_external_mode_creates_no_cluster(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    config, secrets = stack_config("prod")
    config["pgplatform:postgres"] = json.dumps(
        {
            "mode": "external",
            "host": "db.example.com",
            "roHost": "db-ro.example.com",
            "caSecret": "db-ca",
        }
    )
    config["pgplatform:postgresAdminPassword"] = "s3cret-admin"
    config["pgplatform:backup"] = json.dumps({"enabled": False})
    mocks = run_program(
        pulumi_mocks, "prod", config, [*secrets, "pgplatform:postgresAdminPassword"]
    )
    assert not mocks.by_type(CLUSTER)
    (provider,) = mocks.by_type("pulumi:providers:postgresql")
    assert provider.inputs["host"] == "db.example.com"
    assert is_secret(provider.inputs["password"])
    # The admin password travels only as a Pulumi secret (provider, Vault KV), never in clear.
    assert "s3cret-admin" not in json.dumps([redact(r.inputs) for r in mocks.resources])
    assert _roles(mocks)[AUTHENTICATOR]["login"] is True


def _resource_tuples(mocks: RecordingMocks) -> dict[str, set[tuple[Any, ...]]]:
    return {
        "roles": {
            (r["name"], r["login"], r["inherit"], r.get("statementTimeout"))
            for r in _roles(mocks).values()
        },
        "members": {(r.inputs["grantRole"], r.inputs["role"]) for r in mocks.by_type(GRANT_ROLE)},
        "usage": {
            (r.inputs["schema"], r.inputs["role"], tuple(r.inputs["privileges"]))
            for r in mocks.by_type(GRANT)
            if r.inputs["objectType"] == "schema"
        },
        "database": {
            (r.inputs["role"], tuple(r.inputs["privileges"]))
            for r in mocks.by_type(GRANT)
            if r.inputs["objectType"] == "database"
        },
        "defaults": {
            (
                r.inputs["owner"],
                r.inputs.get("schema"),
                r.inputs["role"],
                r.inputs["objectType"],
                tuple(r.inputs["privileges"]),
            )
            for r in mocks.by_type(DEFAULT_PRIVILEGES)
        },
        "existing": {
            (
                r.inputs["schema"],
                r.inputs["role"],
                r.inputs["objectType"],
                tuple(r.inputs["privileges"]),
            )
            for r in mocks.by_type(GRANT)
            if r.inputs["objectType"] in _PLURAL.values() and not r.inputs.get("objects")
        },
    }


_PLURAL = {"TABLES": "table", "SEQUENCES": "sequence", "FUNCTIONS": "function"}


def _sql_tuples(sql: str) -> dict[str, set[tuple[Any, ...]]]:
    """Read the same facts back out of the rendered SQL text."""
    out: dict[str, set[tuple[Any, ...]]] = {
        k: set() for k in ("roles", "members", "usage", "database", "defaults", "existing")
    }
    timeouts = dict(re.findall(r'ALTER ROLE "(\w+)" SET statement_timeout = (\d+);', sql))
    for name, login, inherit in re.findall(r'ALTER ROLE "(\w+)" WITH (NO)?LOGIN (NO)?INHERIT', sql):
        t = timeouts.get(name)
        out["roles"].add((name, login == "", inherit == "", int(t) if t else None))
    out["members"] = set(re.findall(r'^GRANT "(\w+)" TO "(\w+)";$', sql, re.M))

    def who(text: str) -> str:
        return "public" if text == "PUBLIC" else text.strip('"')

    for privs, schema, role in re.findall(
        r'^GRANT ([A-Z, ]+) ON SCHEMA "(\w+)" TO (\S+);$', sql, re.M
    ):
        out["usage"].add((schema, who(role), tuple(privs.split(", "))))
    for schema, role in re.findall(r'^REVOKE ALL ON SCHEMA "(\w+)" FROM (\S+);$', sql, re.M):
        if who(role) == "public" and schema == "public":
            out["usage"].add((schema, "public", ()))
    grants = {
        who(role): tuple(p.split(", "))
        for p, role in re.findall(r'^GRANT ([A-Z, ]+) ON DATABASE "\w+" TO (\S+);$', sql, re.M)
    }
    for role in re.findall(r'^REVOKE ALL ON DATABASE "\w+" FROM (\S+);$', sql, re.M):
        out["database"].add((who(role), grants.get(who(role), ())))
    pattern = (
        r'^ALTER DEFAULT PRIVILEGES FOR ROLE "(\w+)"(?: IN SCHEMA "(\w+)")? '
        r"(GRANT|REVOKE) ([A-Z, ]+) ON (\w+) (?:TO|FROM) (\S+);$"
    )
    revoked = set()
    granted = {}
    for owner, schema, verb, privs, plural, role in re.findall(pattern, sql, re.M):
        key = (owner, schema or None, who(role), _PLURAL[plural])
        if verb == "REVOKE":
            revoked.add(key)
        else:
            granted[key] = tuple(privs.split(", "))
    for key in revoked:
        out["defaults"].add((*key, granted.get(key, ())))
    out["existing"] = _existing_object_tuples(sql)
    return out


def _existing_object_tuples(sql: str) -> set[tuple[Any, ...]]:
    """``GRANT/REVOKE ... ON ALL <objects> IN SCHEMA``: (schema, role, type, privileges)."""
    on_all = r'^(GRANT|REVOKE) ([A-Z, ]+) ON ALL (\w+) IN SCHEMA "(\w+)" (?:TO|FROM) (\S+);$'
    revoked = set()
    granted = {}
    for verb, privs, plural, schema, role in re.findall(on_all, sql, re.M):
        key = (schema, "public" if role == "PUBLIC" else role.strip('"'), _PLURAL[plural])
        if verb == "REVOKE":
            revoked.add(key)
        else:
            granted[key] = tuple(privs.split(", "))
    return {(*key, granted.get(key, ())) for key in revoked}


def test_resources_and_sql_carry_the_same_access(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    config, secrets = stack_config(stack)
    mocks = run_program(pulumi_mocks, stack, config, secrets)
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    settings = parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])
    sql = render_access_sql(inputs.access_plan(settings), settings.postgres.database)
    from_resources = _resource_tuples(mocks)
    from_sql = _sql_tuples(sql)
    for facet in from_resources:
        assert from_resources[facet], facet
        assert from_resources[facet] == from_sql[facet], facet


def test_prod_never_grants_anonymous(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "prod")
    assert "api_anonymous" not in _roles(mocks)
    assert all("anonymous" not in json.dumps(r.inputs) for r in mocks.by_type(GRANT_ROLE))


def test_render_cli_reports_bad_config(tmp_path: Any) -> None:
    bad = tmp_path / "Pulumi.prod.yaml"
    bad.write_text(
        "config:\n"
        "  pgplatform:publicBaseUrl: https://api.example.com\n"
        "  pgplatform:auth: {audience: x, anonymous: true, jwksUrl: https://id.example.com/j}\n"
        "  pgplatform:domains: {identity: {replicas: {min: 4, max: 2}}}\n"
    )
    result = render_in_subprocess("prod", tmp_path / "out", bad)
    assert result.returncode == 2
    assert "pgplatform:domains.identity.replicas: min (4) must be <= max (2)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
