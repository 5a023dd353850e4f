"""The GraphQL pilot in the whole program under mocks: where it exists, what it shares, secrecy."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pulumi
import pytest

from components import inputs
from components.graphql_pilot import GraphqlPilotArgs, graphql_pilot_args
from components.render import graphql_workload as gw
from components.render import pods
from components.render import postgraphile as pgr
from components.render.domain_api import HTTP_PORT
from components.settings import SettingsError, StackSettings, decode_config_value, parse_settings
from tests.conftest import stack_config
from tools import mocks as recording
from tools.mocks import RecordingMocks, is_secret

pytestmark = pytest.mark.unit

ROLE = "postgresql:index/role:Role"
GRANT_ROLE = "postgresql:index/grantRole:GrantRole"
KV = "vault:kv/secretV2:SecretV2"
RANDOM = "random:index/randomPassword:RandomPassword"
PILOT = "pgplatform:index:GraphqlPilot"
PILOT_IMAGE = "registry.internal.example.com/pgplatform/graphql-pilot:4.14.1-0123456789ab"
PROD_PILOT = {"graphql": {"enabled": True, "image": PILOT_IMAGE}}


def settings_of(stack: str, config: dict[str, str], secrets: list[str]) -> StackSettings:
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    return parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])


def run(stack: str, **overrides: Any) -> tuple[RecordingMocks, StackSettings]:
    """The whole program of ``stack`` (with config ``overrides``) under fresh recording mocks."""
    from components.platform import build_platform
    from components.settings import load_settings

    config, secrets = stack_config(stack)
    for key, value in overrides.items():
        config[f"pgplatform:{key}"] = json.dumps(value)
    mocks = recording.install(stack)
    pulumi.runtime.set_all_config(config, secrets)
    try:
        build_platform(load_settings())
    finally:
        recording.settle()
        pulumi.runtime.set_all_config({}, [])
    return mocks, settings_of(stack, config, secrets)


@pytest.fixture(scope="module")
def programs() -> dict[str, tuple[RecordingMocks, StackSettings]]:
    """One run per configuration, shared by the tests of this module (the runs are slow)."""
    return {
        "staging": run("staging"),
        "prod": run("prod"),
        "prod-pilot": run("prod", **PROD_PILOT),
    }


def pilot_kinds(mocks: RecordingMocks) -> dict[str, list[dict[str, Any]]]:
    """Kubernetes objects labelled as the pilot, by kind, with their generated names."""
    found: dict[str, list[dict[str, Any]]] = {}
    for r in mocks.kubernetes():
        labels = (r.inputs.get("metadata") or {}).get("labels") or {}
        if labels == gw.labels():
            kind = r.type.rsplit(":", 1)[-1]
            metadata = r.outputs.get("metadata", r.inputs["metadata"])
            found.setdefault(kind, []).append({**r.inputs, "metadata": metadata})
    return found


def pilot_objects(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    """The pilot's objects of the kinds it has exactly one of."""
    return {kind: objs[0] for kind, objs in pilot_kinds(mocks).items() if len(objs) == 1}


def rest_objects(mocks: RecordingMocks, kind: str, domain: str) -> dict[str, Any]:
    (found,) = [
        r.inputs
        for r in mocks.kubernetes()
        if r.type.endswith(f":{kind}")
        and (r.inputs.get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/instance")
        == domain
        and (r.inputs.get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/name")
        == "postgrest"
    ]
    return found


def kv_values(mocks: RecordingMocks, path_suffix: str) -> dict[str, str]:
    (kv,) = [r.inputs for r in mocks.by_type(KV) if r.inputs["name"].endswith(path_suffix)]
    assert is_secret(kv["dataJson"])
    values: dict[str, str] = json.loads(kv["dataJson"]["value"])
    return values


# -- where the pilot exists ------------------------------------------------------------------------
def test_staging_deploys_the_pilot(programs: dict[str, Any]) -> None:
    mocks, _ = programs["staging"]
    assert len(mocks.by_type(PILOT)) == 1
    kinds = set(pilot_kinds(mocks))
    assert kinds >= {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HTTPRoute",
    }
    # Nothing serves metrics: no monitor scraping nothing.
    assert not kinds & {"ServiceMonitor", "PodMonitor"}
    assert pilot_objects(mocks)["Service"]["metadata"]["name"] == "graphql-api"


def test_prod_has_no_pilot_and_no_graphql_authenticator(programs: dict[str, Any]) -> None:
    mocks, _ = programs["prod"]
    assert not mocks.by_type(PILOT)
    assert pilot_kinds(mocks) == {}
    assert not [r for r in mocks.resources if r.name.startswith("graphql")]
    assert "postgraphile" not in {r.inputs["name"] for r in mocks.by_type(ROLE)}
    assert not [r for r in mocks.by_type(GRANT_ROLE) if r.inputs["role"] == "postgraphile"]


@pytest.mark.parametrize("program", ["staging", "prod-pilot"])
def test_the_pilot_logs_in_as_its_own_locked_down_authenticator(
    programs: dict[str, Any], program: str
) -> None:
    mocks, _ = programs[program]
    roles = {r.inputs["name"]: r.inputs for r in mocks.by_type(ROLE)}
    auth = roles["postgraphile"]
    assert auth["login"] is True
    assert auth["inherit"] is False
    for flag in ("superuser", "bypassRowLevelSecurity", "createRole", "createDatabase"):
        assert auth[flag] is False, flag
    granted = {
        role: {r.inputs["grantRole"] for r in mocks.by_type(GRANT_ROLE) if r.inputs["role"] == role}
        for role in ("postgrest", "postgraphile")
    }
    assert granted["postgraphile"] == granted["postgrest"]
    # Its password reaches the pod through Vault only.
    assert kv_values(mocks, "/graphql")["password"] == auth["password"]["value"]


def test_prod_refuses_the_pilot_without_its_image() -> None:
    config, secrets = stack_config("prod")
    config["pgplatform:graphql"] = json.dumps({"enabled": True})
    with pytest.raises(SettingsError, match=r"pgplatform:graphql\.image: prod runs the pilot"):
        settings_of("prod", config, secrets)


def test_removed_npm_keys_say_what_replaced_them() -> None:
    config, secrets = stack_config("staging")
    config["pgplatform:graphql"] = json.dumps({"npmRegistry": "https://registry.npmjs.org/"})
    with pytest.raises(
        SettingsError, match=r"pgplatform:graphql\.npmRegistry: removed: .*graphql\.image"
    ):
        settings_of("staging", config, secrets)


@pytest.mark.parametrize(
    ("image", "hint"),
    [
        ("ghcr.io/pgplatform/graphql-pilot:latest", "'latest' is not a pinned version"),
        ("ghcr.io/pgplatform/graphql-pilot", "pin a tag or a digest"),
        ("graphql-pilot:1.0", "not an image reference"),
        ("pgplatform/graphql-pilot:1.0", "name the registry host"),
    ],
)
def test_bad_pilot_image_names_the_key(image: str, hint: str) -> None:
    config, secrets = stack_config("prod")
    config["pgplatform:graphql"] = json.dumps({"enabled": True, "image": image})
    with pytest.raises(SettingsError, match=r"pgplatform:graphql\.image: ") as caught:
        settings_of("prod", config, secrets)
    assert hint in str(caught.value)


@pytest.mark.parametrize("program", ["staging", "prod-pilot"])
def test_pod_runs_the_built_image_and_installs_nothing(
    programs: dict[str, Any], program: str
) -> None:
    from components.render.graphql_image import default_reference

    mocks, s = programs[program]
    pilot = pilot_objects(mocks)
    pod = pilot["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    expected = PILOT_IMAGE if program == "prod-pilot" else default_reference()
    assert server["image"] == expected
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-secrets"]
    assert {v["name"] for v in pod["volumes"]} <= {"tmp", "config", "jwks"}
    assert set(pilot["ConfigMap"]["data"]) == {pgr.RC_FILE}
    assert s.graphql.enabled


# -- the same tokens and the same database context as the REST APIs --------------------------------
def rc_of(pilot: dict[str, dict[str, Any]]) -> dict[str, Any]:
    text = pilot["ConfigMap"]["data"][pgr.RC_FILE]
    match = re.search(r"^const CONFIG = (\{.*?^\});$", text, re.MULTILINE | re.DOTALL)
    assert match is not None
    parsed: dict[str, Any] = json.loads(match.group(1))
    return parsed


@pytest.mark.parametrize("program", ["staging", "prod-pilot"])
def test_jwt_rules_and_sql_context_equal_postgrest(programs: dict[str, Any], program: str) -> None:
    mocks, s = programs[program]
    rest = inputs.postgrest_conf_input(s, s.graphql.schemas[0])
    rc = rc_of(pilot_objects(mocks))
    assert rc["audience"] == rest.jwt_audience == s.auth.audience
    assert rc["roleClaimPath"] == list(pgr.parse_role_claim_key(rest.role_claim_key))
    assert rc["defaultRole"] == rest.anon_role
    assert rc["preRequest"] == rest.pre_request


def test_staging_uses_the_one_hs256_secret_of_the_rest_apis(programs: dict[str, Any]) -> None:
    mocks, _ = programs["staging"]
    # One generated key for the stack, never a second one for the pilot.
    assert [r.name for r in mocks.by_type(RANDOM) if "jwt" in r.name] == ["jwt-secret"]
    pilot = kv_values(mocks, "/graphql")["jwt_secret"]
    for domain in ("identity", "content", "analytics"):
        assert kv_values(mocks, f"/{domain}-postgrest")["jwt_secret"] == pilot
    (server,) = pilot_objects(mocks)["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var for var in server["env"]}
    assert env[pgr.JWT_SECRET_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "graphql-secrets",
        "key": "jwt_secret",
    }


def test_prod_pilot_fetches_the_rest_apis_jwks(programs: dict[str, Any]) -> None:
    mocks, s = programs["prod-pilot"]
    stores = [
        r.inputs["spec"]["provider"]["webhook"]["url"]
        for r in mocks.kubernetes()
        if r.type.endswith(":SecretStore") and "webhook" in r.inputs["spec"]["provider"]
    ]
    assert stores
    assert set(stores) == {s.auth.jwks_url}
    pilot = pilot_objects(mocks)
    targets = {e["spec"]["target"]["name"] for e in pilot_kinds(mocks)["ExternalSecret"]}
    assert targets == {"graphql-secrets", gw.JWKS_SECRET}
    # No HS256 key in prod: the pilot's Vault secret holds only its password.
    assert set(kv_values(mocks, "/graphql")) == {"password", "checksum"}
    pod = pilot["Deployment"]["spec"]["template"]["spec"]
    (jwks,) = [v for v in pod["volumes"] if v["name"] == "jwks"]
    assert jwks["secret"]["secretName"] == gw.JWKS_SECRET
    assert rc_of(pilot)["jwksFile"] == f"{gw.JWKS_DIR}/{gw.JWKS_KEY}"


def test_route_shares_the_rest_parent_and_forward_auth(programs: dict[str, Any]) -> None:
    mocks, s = programs["staging"]
    route = pilot_objects(mocks)["HTTPRoute"]["spec"]
    rest = rest_objects(mocks, "HTTPRoute", s.graphql.schemas[0])["spec"]
    assert route["parentRefs"] == rest["parentRefs"]
    assert route["hostnames"] == rest["hostnames"]
    (rule,) = route["rules"]
    rest_filters = [f for f in rest["rules"][0]["filters"] if f["type"] == "ExtensionRef"]
    assert rule.get("filters", []) == rest_filters
    assert [m["path"]["value"] for m in rule["matches"]] == [
        "/graphql/identity",
        "/graphql/identity/graphiql",
    ]
    assert rule["backendRefs"][0]["name"] == "graphql-api"
    assert rule["backendRefs"][0]["port"] != HTTP_PORT  # the pilot's own port, not PostgREST's


def test_forward_auth_filter_follows_the_gateway_setting() -> None:
    mocks, _ = run(
        "staging",
        gateway={
            "name": "platform-gateway",
            "namespace": "gateway",
            "forwardAuthGroup": "traefik.io",
            "forwardAuthKind": "Middleware",
            "forwardAuthName": "forward-auth",
        },
    )
    (rule,) = pilot_objects(mocks)["HTTPRoute"]["spec"]["rules"]
    assert rule["filters"] == [
        {
            "type": "ExtensionRef",
            "extensionRef": {"group": "traefik.io", "kind": "Middleware", "name": "forward-auth"},
        }
    ]


# -- hardening and secrecy -------------------------------------------------------------------------
@pytest.mark.parametrize("program", ["staging", "prod-pilot"])
def test_every_container_of_the_pilot_is_hardened(programs: dict[str, Any], program: str) -> None:
    mocks, s = programs[program]
    deployment = pilot_objects(mocks)["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["topologySpreadConstraints"]
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context == pods.container_security_context(pgr.NODE_UID), container["name"]
        assert container["resources"]["limits"], container["name"]
        image = container["image"]
        assert re.search(r":[0-9][A-Za-z0-9._-]*$", image), image
    (server,) = pod["containers"]
    assert {probe: server[probe]["tcpSocket"] for probe in ("livenessProbe", "readinessProbe")}
    assert pods.CHECKSUM_ANNOTATION in deployment["template"]["metadata"]["annotations"]
    hpa = pilot_objects(mocks)["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
        s.graphql.replicas.min,
        s.graphql.replicas.max,
    )


@pytest.mark.parametrize("program", ["staging", "prod-pilot"])
def test_no_secret_in_config_map_or_env_literals(programs: dict[str, Any], program: str) -> None:
    mocks, _ = programs[program]
    secrets = {v for k, v in kv_values(mocks, "/graphql").items() if k != "checksum"}
    assert secrets
    pilot = pilot_objects(mocks)
    literals = json.dumps(pilot["ConfigMap"]["data"])
    pod = pilot["Deployment"]["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        literals += json.dumps([v.get("value") for v in container.get("env", [])])
        literals += json.dumps(container.get("args", []) + container.get("command", []))
    for value in secrets:
        assert value not in literals
    assert not any(is_secret(v) for v in pilot["ConfigMap"]["data"].values())


@pytest.mark.parametrize("program", ["staging", "prod-pilot"])
def test_network_reach(programs: dict[str, Any], program: str) -> None:
    mocks, s = programs[program]
    policy = pilot_objects(mocks)["NetworkPolicy"]["spec"]
    ingress, metrics = policy["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {gw.NAMESPACE_LABEL: s.gateway.namespace}}}
    ]
    # The plugin's /metrics port: Prometheus only, never the gateway.
    assert metrics == {
        "from": [
            {
                "namespaceSelector": {
                    "matchLabels": {gw.NAMESPACE_LABEL: s.observability.prometheus_namespace}
                }
            }
        ],
        "ports": [{"protocol": "TCP", "port": 9464}],
    }
    # PgBouncer and DNS only: no address block, so no way out of the cluster.
    pooler, _dns = policy["egress"]
    assert pooler["to"][0]["podSelector"]["matchLabels"] == pods.selector_labels(
        "pgbouncer", "pgbouncer"
    )
    assert "ipBlock" not in json.dumps(policy)


# -- args validate themselves ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"jwt_secret": None}, "jwt_secret"),
        ({"jwks_url": "https://id.example.com/jwks.json"}, "jwks_url"),
        ({"public_base_url": "http://api.example.com"}, "public_base_url"),
        ({"route": "without graphiql"}, "route.paths"),
        ({"postgraphile": "another secret"}, "postgraphile.db_password"),
    ],
)
def test_args_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    config, secrets = stack_config("staging")
    args = graphql_pilot_args(
        settings_of("staging", config, secrets), db_password="pw", jwt_secret="k" * 40
    )
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    if change.get("route") == "without graphiql":
        change = {"route": dataclasses.replace(args.route, paths=args.route.paths[:1])}
    elif change.get("postgraphile") == "another secret":
        ref = pgr.SecretKeyRef(name="other-secrets", key="password")
        change = {"postgraphile": dataclasses.replace(args.postgraphile, db_password=ref)}
    values.update(change)
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        GraphqlPilotArgs(**values)
