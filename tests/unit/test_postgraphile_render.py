"""The GraphQL pilot's pure builder: container spec, rc file, validation, package pins."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from components.render import postgraphile as pgr

pytestmark = pytest.mark.unit

GRAPHQL_DIR = pgr.PACKAGE_DIR
DB_PASSWORD = pgr.SecretKeyRef(name="graphql-db", key="password")
JWT_SECRET = pgr.SecretKeyRef(name="graphql-jwt", key="secret")


def make(**overrides: Any) -> pgr.PostgraphileInput:
    values: dict[str, Any] = {
        "schemas": ("identity",),
        "db_host": "pgplatform-pgbouncer-rw.pgplatform.svc.cluster.local",
        "db_port": 5432,
        "db_name": "app_rw",
        "db_password": DB_PASSWORD,
        "db_sslmode": "disable",
        "jwt_audience": "pgplatform",
        "jwks_file": "/etc/postgraphile/jwks/jwks.json",
    }
    values.update(overrides)
    return pgr.PostgraphileInput(**values)


def rendered_config(text: str) -> dict[str, Any]:
    """The CONFIG object literal embedded in the rendered rc file."""
    match = re.search(r"^const CONFIG = (\{.*?^\});$", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "no CONFIG literal in the rc file"
    parsed: dict[str, Any] = json.loads(match.group(1))
    return parsed


# -- no secret values ------------------------------------------------------------------------------
def test_secrets_appear_only_as_secret_key_refs() -> None:
    inp = make(jwks_file=None, jwt_secret=JWT_SECRET)
    env = {var["name"]: var for var in pgr.container_env(inp)}
    assert env[pgr.DB_PASSWORD_ENV] == {
        "name": "PGPASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "graphql-db", "key": "password"}},
    }
    assert env[pgr.JWT_SECRET_ENV] == {
        "name": "PGPLATFORM_JWT_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "graphql-jwt", "key": "secret"}},
    }
    for var in env.values():
        assert ("value" in var) != ("valueFrom" in var), var
    # The v4 CLI would switch on its own JWT handling if JWT_SECRET were set.
    assert "JWT_SECRET" not in env
    assert pgr.rc_config(inp)["jwtSecretEnv"] == "PGPLATFORM_JWT_SECRET"


def test_connection_string_carries_no_password() -> None:
    args = pgr.container_args(make())
    url = args[args.index("--connection") + 1]
    assert url.startswith("postgres://postgraphile@pgplatform-pgbouncer-rw.")
    assert re.match(r"^postgres://[a-z_]+@", url), "user:password@ would leak into the args"
    assert not any("password" in arg.lower() for arg in args)


def test_jwks_input_renders_no_secret_env() -> None:
    env_names = {var["name"] for var in pgr.container_env(make())}
    assert env_names == {"PGPASSWORD", "POSTGRAPHILE_PREPARED_STATEMENT_CACHE_SIZE", "NODE_ENV"}
    config = rendered_config(pgr.render_rc_file(make()))
    assert config["jwksFile"] == "/etc/postgraphile/jwks/jwks.json"
    assert config["jwtSecretEnv"] is None


def test_prepared_statements_are_off_for_transaction_pooling() -> None:
    env = {var["name"]: var.get("value") for var in pgr.container_env(make())}
    assert env["POSTGRAPHILE_PREPARED_STATEMENT_CACHE_SIZE"] == "0"


# -- command and flags -----------------------------------------------------------------------------
def test_command_runs_the_installed_cli() -> None:
    assert pgr.container_command(make()) == ["node", "/app/node_modules/postgraphile/cli.js"]
    assert pgr.container_command(make(app_dir="/srv/graphql"))[1].startswith("/srv/graphql/")


def test_graphiql_off_unless_enabled() -> None:
    off = pgr.container_args(make())
    assert "--disable-graphiql" in off
    assert "--enhance-graphiql" not in off
    on = pgr.container_args(make(graphiql=True, graphiql_route="/graphql/identity/graphiql"))
    assert "--disable-graphiql" not in on
    assert on[on.index("--graphiql") + 1] == "/graphql/identity/graphiql"


def test_query_log_off_by_default() -> None:
    assert "--disable-query-log" in pgr.container_args(make())
    assert "--disable-query-log" not in pgr.container_args(make(query_log=True))


def test_flags() -> None:
    args = pgr.container_args(make(schemas=("identity", "content"), port=8080))
    pairs = dict(itertools.pairwise(args))
    assert pairs["--schema"] == "identity,content"
    assert pairs["--port"] == "8080"
    assert pairs["--host"] == "0.0.0.0"  # noqa: S104 - the pod's own address
    assert pairs["--graphql"] == "/graphql"
    for flag in ("--no-ignore-rbac", "--retry-on-init-fail"):
        assert flag in args
    # No watch mode (needs a superuser), no CORS, no stack traces, no explain.
    for flag in ("--watch", "--cors", "--show-error-stack", "--allow-explain", "--jwt-secret"):
        assert flag not in args


@pytest.mark.parametrize(
    ("sslmode", "rootcert", "expected"),
    [
        ("disable", None, "sslmode=disable"),
        ("require", None, "sslmode=require&uselibpqcompat=true"),
        ("verify-full", "/etc/postgraphile/ca/ca.crt", "sslmode=verify-full&sslrootcert=/etc/"),
    ],
)
def test_sslmode_in_connection_string(sslmode: str, rootcert: str | None, expected: str) -> None:
    url = pgr.connection_string(make(db_sslmode=sslmode, db_sslrootcert=rootcert))
    assert url.startswith("postgres://postgraphile@pgplatform-pgbouncer-rw.")
    assert expected in url
    assert "application_name=postgraphile" in url


# -- rc file ---------------------------------------------------------------------------------------
def test_rc_file_embeds_the_settings() -> None:
    inp = make(
        jwt_role_claim_key='."https://example.com/claims".roles[0]',
        default_role="api_user",
        role_timeouts_ms={"api_user": 5000, "api_admin": 30000},
    )
    text = pgr.config_files(inp)[pgr.RC_FILE]
    assert rendered_config(text) == {
        "appDir": "/app",
        "audience": "pgplatform",
        "defaultRole": "api_user",
        "jwksFile": "/etc/postgraphile/jwks/jwks.json",
        "jwtSecretEnv": None,
        "preRequest": "platform.pre_request",
        "roleTimeoutsMs": {"api_admin": 30000, "api_user": 5000},
        "roleClaimPath": ["https://example.com/claims", "roles", 0],
        "metricsPort": 9464,
        "metricsHost": "0.0.0.0",  # noqa: S104 - the pod's own address
        "maxOperationNames": 100,
        "requestLog": True,
    }
    assert "__PGPLATFORM_CONFIG__" not in text
    # What PostGraphile applies per transaction: the role and PostgREST's claims GUC.
    assert "'request.jwt.claims': JSON.stringify({ ...claims, role })" in text
    assert "options: { pgSettings, plugins: [__filename] }" in text
    # The telemetry hooks of the same plugin (proven with the real server in the integration
    # tests): metrics and the request log per operation, the trace context into the session.
    for hook in (
        "'postgraphile:http:handler'",
        "'postgraphile:http:result'",
        "'postgraphile:http:end'",
        "'cli:server:created'",
    ):
        assert hook in text
    assert "settings.application_name = `${APPLICATION_NAME}:${traceparent}`" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics_port": 5000}, "metrics_port: must differ"),
        ({"metrics_port": 0}, "metrics_port"),
        ({"max_operation_names": 0}, "max_operation_names"),
    ],
)
def test_telemetry_settings_validate(change: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**change)


def test_metrics_can_be_off() -> None:
    config = rendered_config(pgr.render_rc_file(make(metrics_port=None, request_log=False)))
    assert (config["metricsPort"], config["requestLog"]) == (None, False)


def test_prod_defaults_refuse_anonymous_requests() -> None:
    config = rendered_config(pgr.render_rc_file(make()))
    assert config["defaultRole"] is None
    assert config["preRequest"] == "platform.pre_request"
    assert rendered_config(pgr.render_rc_file(make(pre_request=None)))["preRequest"] is None


def test_no_audience_accepts_any_like_postgrest() -> None:
    assert rendered_config(pgr.render_rc_file(make(jwt_audience=None)))["audience"] is None


def test_rendering_is_deterministic() -> None:
    assert pgr.render_rc_file(make()) == pgr.render_rc_file(make())


@pytest.mark.parametrize(
    ("key", "path"),
    [
        (".role", ("role",)),
        (".realm_access.roles[1]", ("realm_access", "roles", 1)),
        ('."https://www.example.com/role".key', ("https://www.example.com/role", "key")),
        (".postgrest.roles[0][2]", ("postgrest", "roles", 0, 2)),
        (".$a@b_1", ("$a@b_1",)),
    ],
)
def test_role_claim_key_subset(key: str, path: tuple[str | int, ...]) -> None:
    assert pgr.parse_role_claim_key(key) == path
    assert make(jwt_role_claim_key=key).role_claim_path == path


@pytest.mark.parametrize(
    "key",
    [
        "",
        "role",
        "[0]",
        '.roles[?(@ == "author")]',
        ".wlcg[0][1:]",
        ".a..b",
        ".a b",
        '.""',
        ".roles[-1]",
    ],
)
def test_role_claim_key_outside_the_subset_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match=r"^jwt_role_claim_key: "):
        make(jwt_role_claim_key=key)


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"schemas": ()}, "schemas"),
        ({"schemas": ("identity", "identity")}, "schemas"),
        ({"schemas": ("Identity",)}, "schemas"),
        ({"schemas": ("platform",)}, "schemas"),
        ({"schemas": ("audit",)}, "schemas"),
        ({"schemas": ("public",)}, "schemas"),
        ({"schemas": ("pg_catalog",)}, "schemas"),
        ({"db_host": ""}, "db_host"),
        ({"db_host": "db host"}, "db_host"),
        ({"db_host": "user@db"}, "db_host"),
        ({"db_port": 0}, "db_port"),
        ({"db_port": 70000}, "db_port"),
        ({"db_port": True}, "db_port"),
        ({"db_name": "app?sslmode=disable"}, "db_name"),
        ({"db_user": "Postgraphile"}, "db_user"),
        ({"db_sslmode": "prefer"}, "db_sslmode"),
        ({"db_sslmode": "verify-full"}, "db_sslrootcert"),
        ({"db_sslrootcert": "/ca.crt"}, "db_sslrootcert"),
        ({"db_sslmode": "require", "db_sslrootcert": "ca.crt"}, "db_sslrootcert"),
        ({"jwt_audience": "two words"}, "jwt_audience"),
        ({"jwt_audience": ""}, "jwt_audience"),
        ({"jwks_file": None}, "jwt_secret/jwks_file"),
        ({"jwt_secret": JWT_SECRET}, "jwt_secret/jwks_file"),
        ({"jwks_file": "jwks.json"}, "jwks_file"),
        ({"jwks_file": "/etc/../jwks.json"}, "jwks_file"),
        ({"default_role": "api user"}, "default_role"),
        ({"default_role": "postgraphile"}, "default_role"),
        ({"pre_request": "pre_request"}, "pre_request"),
        ({"pre_request": "platform.pre_request(); drop table x"}, "pre_request"),
        ({"port": 65536}, "port"),
        ({"listen_host": ""}, "listen_host"),
        ({"graphql_route": "graphql"}, "graphql_route"),
        ({"graphql_route": "/graphql/"}, "graphql_route"),
        ({"graphql_route": "//graphql"}, "graphql_route"),
        ({"graphiql_route": "graphiql"}, "graphiql_route"),
        ({"graphiql_route": "/graphql"}, "graphiql_route"),
        ({"max_pool_size": 0}, "max_pool_size"),
        ({"max_pool_size": True}, "max_pool_size"),
        ({"config_dir": "etc"}, "config_dir"),
        ({"app_dir": "/app dir"}, "app_dir"),
        ({"role_timeouts_ms": {"API user": 5000}}, "role_timeouts_ms"),
        ({"role_timeouts_ms": {"api_user": 0}}, "role_timeouts_ms.api_user"),
        ({"role_timeouts_ms": {"api_user": "5s"}}, "role_timeouts_ms.api_user"),
    ],
)
def test_bad_input_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        make(**overrides)


@pytest.mark.parametrize(
    ("name", "key", "field"),
    [("Graphql", "password", "name"), ("graphql-db", "pass word", "key"), ("", "k", "name")],
)
def test_bad_secret_ref_names_the_field(name: str, key: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        pgr.SecretKeyRef(name=name, key=key)


def test_input_is_frozen() -> None:
    inp = make()
    with pytest.raises(AttributeError):
        inp.graphiql = True  # type: ignore[misc]


# -- the package files the pod installs are the tested ones ---------------------------------------
def test_package_files_pin_the_rendered_version() -> None:
    files = pgr.read_package_files(GRAPHQL_DIR)
    assert set(files) == set(pgr.PACKAGE_FILES)
    manifest = json.loads(files["package.json"])
    # Exact versions only: no ranges for anything the runtime loads.
    for name, version in manifest["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (name, version)
    lock = json.loads(files["package-lock.json"])
    assert lock["lockfileVersion"] >= 2
    assert lock["packages"]["node_modules/postgraphile"]["version"] == pgr.POSTGRAPHILE_VERSION
    # The rc file loads jsonwebtoken from the installed tree: it must be a direct dependency.
    assert "jsonwebtoken" in manifest["dependencies"]


def test_package_files_with_another_version_are_refused(tmp_path: Path) -> None:
    manifest = json.loads((GRAPHQL_DIR / "package.json").read_text())
    manifest["dependencies"]["postgraphile"] = "^4.14.0"
    (tmp_path / "package.json").write_text(json.dumps(manifest))
    (tmp_path / "package-lock.json").write_text((GRAPHQL_DIR / "package-lock.json").read_text())
    with pytest.raises(ValueError, match=r"^package\.json: postgraphile is '\^4\.14\.0'"):
        pgr.read_package_files(tmp_path)


def test_lockfile_without_postgraphile_is_refused(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text((GRAPHQL_DIR / "package.json").read_text())
    lock = json.loads((GRAPHQL_DIR / "package-lock.json").read_text())
    del lock["packages"]["node_modules/postgraphile"]
    (tmp_path / "package-lock.json").write_text(json.dumps(lock))
    with pytest.raises(ValueError, match=r"^package-lock\.json: "):
        pgr.read_package_files(tmp_path)
