"""The GraphQL pilot: the real PostGraphile, started from the rendered Deployment and ConfigMap.

Nothing here is built from the Python builders: the pod is read back from the offline render
(``build/<stack>/manifests`` and ``files``). The npm tree is the image's: the ``RUN npm ci``
line of ``components/graphql/Dockerfile`` runs on the files its ``COPY`` takes (the very same
``package-lock.json``), and each server runs the rendered command, arguments,
environment (secretKeyRefs resolved as the kubelet would) and ``.postgraphilerc.js``; only
what cannot be the same on a test machine is rewritten (mount paths, the PgBouncer address,
the listen address and port), and the rewrite refuses to touch anything else.

Two servers: staging's (HS256 secret, anonymous role, GraphiQL on) and prod's configuration
with the pilot switched on (JWKS with an RSA and an EC key, no anonymous access), both behind a
real PgBouncer started from the rendered ``pgbouncer.ini`` in front of a TLS-only PostgreSQL
carrying staging's rendered SQL and the example domains. For each case of claims the rows
PostGraphile returns must be exactly the rows of PostgREST's per-request transaction (role,
claims, ``platform.pre_request()``) run as the PostgREST authenticator; refused tokens never
see data.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg import sql

from components.render.pgbouncer import INI_FILE, render_userlist
from tests.conftest import ROOT
from tests.integration.pg import PgCluster, free_port, running_cluster
from tests.integration.pgbouncer import PgBouncerProcess
from tests.tooling import require_tool
from tools.migrate_db import apply_migrations, rendered_migrations
from tools.render import render_in_subprocess

pytestmark = pytest.mark.integration

DATABASE = "app"
PASSWORDS = {
    "postgraphile": "graphql-authenticator-test-password",
    "postgrest": "rest-authenticator-test-password",
    "pgbouncer_auth": "lookup-test-password",
}
HS256_SECRET = "graphql-pilot-test-secret-of-more-than-32-chars"
# What the pilot's Secret (from Vault) holds in the test: secret name, key -> value.
SECRET_VALUES = {
    ("graphql-secrets", "password"): PASSWORDS["postgraphile"],
    ("graphql-secrets", "jwt_secret"): HS256_SECRET,
}
ACCOUNTS = (("user-a", "Alice"), ("user-b", "Bob"), ("editor-e", "Eve"))
ACCOUNTS_QUERY = "{ allAccounts(orderBy: SUB_ASC) { nodes { sub displayName } } }"
STARTUP_SECONDS = 90
HOST_NETWORK_ENV = frozenset(
    {"NODE_EXTRA_CA_CERTS", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"}
    | {"NO_PROXY", "no_proxy"}
)
# Prod's stack file with the pilot switched on: prod names the image its pipeline pushed.
PROD_PILOT_CONFIG = {
    "pgplatform:graphql": {
        "enabled": True,
        "image": "registry.internal.example.com/pgplatform/graphql-pilot:4.14.1-0123456789ab",
    }
}
Conn = psycopg.Connection[Any]
SLOW_FUNCTION = """
CREATE FUNCTION identity.wait_for(seconds double precision) RETURNS double precision
LANGUAGE sql STABLE SET search_path = ''
AS $$ SELECT seconds FROM (SELECT pg_catalog.pg_sleep(seconds)) AS slept $$
"""
# Longer than api_user's statement_timeout (5s), shorter than api_editor's (10s).
SLOW_SECONDS = 7


# -- the render ------------------------------------------------------------------------------------
def load_manifests(build: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted((build / "manifests").glob("*"))]


def config_map_files(build: Path, name: str, manifests: list[dict[str, Any]]) -> dict[str, str]:
    """A ConfigMap's payload as the render wrote it to ``files/<name>/`` (checked complete)."""
    (config_map,) = [
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name
    ]
    files = {key: (build / "files" / name / key).read_text() for key in config_map["data"]}
    assert files == config_map["data"], f"files/{name} differs from the ConfigMap manifest"
    return files


@dataclass(frozen=True)
class DeployedPilot:
    """The PostGraphile pod of one render: its containers and its ConfigMap files."""

    server: dict[str, Any]
    files: dict[str, str]
    mounts: dict[str, str] = field(default_factory=dict)
    """Volume name -> mount path in the server container."""

    @property
    def rc_file(self) -> str:
        return self.files[".postgraphilerc.js"]


def deployed_pilot(build: Path) -> DeployedPilot:
    manifests = load_manifests(build)
    (deployment,) = [
        m
        for m in manifests
        if m["kind"] == "Deployment"
        and m["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name")
        == "postgraphile"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    # The image holds the tree: no install step runs in the pod.
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-secrets"]
    (config_map,) = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    return DeployedPilot(
        server=server,
        files=config_map_files(build, config_map, manifests),
        mounts={m["name"]: m["mountPath"] for m in server["volumeMounts"]},
    )


@pytest.fixture(scope="module")
def staging_build(rendered_stack: Callable[[str], Path]) -> Path:
    return rendered_stack("staging")


@pytest.fixture(scope="module")
def prod_pilot_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prod's configuration with ``graphql.enabled``: what prod would deploy when switched on."""
    document = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    document["config"].update(PROD_PILOT_CONFIG)
    directory = tmp_path_factory.mktemp("prod-pilot")
    config = directory / "Pulumi.prod.yaml"
    config.write_text(yaml.safe_dump(document))
    out = directory / "build"
    result = render_in_subprocess("prod", out, config)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_prod_has_no_pilot_unless_switched_on(
    rendered_stack: Callable[[str], Path], prod_pilot_build: Path
) -> None:
    prod = rendered_stack("prod")
    names = {m["metadata"].get("name", "") for m in load_manifests(prod)}
    assert "graphql-api" not in names
    assert "postgraphile" not in (prod / "sql" / "010_access.sql").read_text()
    assert '"postgraphile"' in (prod_pilot_build / "sql" / "010_access.sql").read_text()


# -- keys ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signer:
    """How tokens for one server are signed, for the audience that server checks."""

    algorithm: str
    key: Any
    audience: str
    kid: str | None = None

    def token(self, claims: Mapping[str, Any]) -> str:
        headers = {"kid": self.kid} if self.kid is not None else None
        return jwt.encode(dict(claims), self.key, algorithm=self.algorithm, headers=headers)

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"aud": self.audience, "iat": now, "exp": now + 300, **extra}


def rc_config(rc_file: str) -> dict[str, Any]:
    """The CONFIG object literal embedded in a rendered rc file."""
    match = re.search(r"^const CONFIG = (\{.*?^\});$", rc_file, re.MULTILINE | re.DOTALL)
    assert match is not None, "no CONFIG literal in the rendered rc file"
    parsed: dict[str, Any] = json.loads(match.group(1))
    return parsed


@dataclass(frozen=True)
class Keys:
    staging: Signer  # HS256 with the Secret's jwt_secret
    prod_rs256: Signer
    prod_es256: Signer
    prod_impostor: Signer  # another RSA key claiming the published kid
    jwks_file: Path


@pytest.fixture(scope="module")
def keys(
    tmp_path_factory: pytest.TempPathFactory, staging_build: Path, prod_pilot_build: Path
) -> Keys:
    staging_aud = rc_config(deployed_pilot(staging_build).rc_file)["audience"]
    prod_aud = rc_config(deployed_pilot(prod_pilot_build).rc_file)["audience"]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            {**ec_jwk, "kid": "ec-1", "use": "sig"},
        ]
    }
    jwks_file = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    return Keys(
        staging=Signer("HS256", HS256_SECRET, staging_aud),
        prod_rs256=Signer("RS256", rsa_key, prod_aud, "rsa-1"),
        prod_es256=Signer("ES256", ec_key, prod_aud, "ec-1"),
        prod_impostor=Signer("RS256", impostor, prod_aud, "rsa-1"),
        jwks_file=jwks_file,
    )


def signer_for(keys: Keys, server: str) -> Signer:
    return keys.staging if server == "staging" else keys.prod_rs256


# -- database and pooler ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def database(staging_build: Path) -> Iterator[PgCluster]:
    """staging's rendered SQL (access plan with ``postgraphile``, baseline) and the domains."""
    bundle = [(path.name, path.read_text()) for path in sorted((staging_build / "sql").glob("*"))]
    with running_cluster(tls_only=True) as cluster:
        cluster.create_database(DATABASE)
        cluster.apply_sql(DATABASE, bundle)
        apply_migrations(cluster, DATABASE, rendered_migrations(staging_build))
        with cluster.connect(DATABASE) as conn:
            for role, password in PASSWORDS.items():
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
            # Superuser: RLS does not apply, as for a migration seeding data.
            conn.cursor().executemany(
                "INSERT INTO identity.accounts (sub, display_name) VALUES (%s, %s)", ACCOUNTS
            )
            # A slow query field for the statement timeout test (Query.waitFor).
            with conn.transaction():
                conn.execute("SET LOCAL ROLE pgplatform_owner")
                conn.execute(SLOW_FUNCTION)
        yield cluster


def rendered_pgbouncer_ini(build: Path) -> str:
    """The deployed ``pgbouncer.ini``: the one ConfigMap of the render that carries it."""
    manifests = load_manifests(build)
    (name,) = [
        m["metadata"]["name"]
        for m in manifests
        if m["kind"] == "ConfigMap" and INI_FILE in (m.get("data") or {})
    ]
    return config_map_files(build, name, manifests)[INI_FILE]


@pytest.fixture(scope="module")
def pgbouncer(database: PgCluster, staging_build: Path) -> Iterator[PgBouncerProcess]:
    ini = rendered_pgbouncer_ini(staging_build)
    # Only path settings the rendered file has are pointed at test copies.
    files = {"server_tls_ca_file": database.ca_file} if "\nserver_tls_ca_file =" in ini else {}
    with PgBouncerProcess(
        ini,
        render_userlist({"pgbouncer_auth": PASSWORDS["pgbouncer_auth"]}),
        server_host=database.host,
        server_port=database.port,
        files=files,
    ) as process:
        yield process


def rw_pool(pilot: DeployedPilot) -> str:
    """The pool database the rendered connection string names (PgBouncer's ``<db>_rw``)."""
    args = pilot.server["args"]
    return urlsplit(args[args.index("--connection") + 1]).path.lstrip("/")


@pytest.fixture
def rest(pgbouncer: PgBouncerProcess, staging_build: Path) -> Iterator[Conn]:
    """The PostgREST authenticator on the same rw pool PostGraphile uses."""
    pool = rw_pool(deployed_pilot(staging_build))
    with pgbouncer.connect("postgrest", PASSWORDS["postgrest"], pool) as conn:
        yield conn


@dataclass(frozen=True)
class Refused:
    """PostgREST's transaction failed: the SQLSTATE it failed with."""

    sqlstate: str | None


def postgrest_request(conn: Conn, token_claims: Mapping[str, Any], query: str) -> Any:
    """PostgREST's per-request transaction (DESIGN.md §2) for a verified token's claims."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(token_claims["role"])))
            conn.execute(
                "SELECT set_config('request.jwt.claims', %s, true), "
                "set_config('request.method', 'GET', true), "
                "set_config('request.path', '/accounts', true), "
                "set_config('request.headers', '{}', true)",
                (json.dumps(token_claims),),
            )
            conn.execute("SELECT platform.pre_request()")
            return conn.execute(query).fetchall()
    except psycopg.Error as error:
        return Refused(error.sqlstate)


# -- the rendered pod, run locally -----------------------------------------------------------------
def _rewrite_prefix(value: str, old: str, new: str) -> str:
    return new + value[len(old) :] if value == old or value.startswith(f"{old}/") else value


@dataclass(frozen=True)
class ImageRecipe:
    """What ``components/graphql/Dockerfile`` installs: its files, its npm ci, its WORKDIR."""

    package_files: dict[str, str]
    command: list[str]
    app_dir: str
    entrypoint: list[str]


def image_recipe() -> ImageRecipe:
    from components.render import graphql_image as gi

    context = ROOT / "components" / "graphql"
    build, final = gi.stages(gi.parse_dockerfile((context / gi.DOCKERFILE).read_text()))
    (copy,) = [i.argument.split() for i in build if i.keyword == "COPY"]
    *sources, _destination = copy
    workdir = [i.argument for i in final if i.keyword == "WORKDIR"][-1]
    entrypoint = next(i.argument for i in final if i.keyword == "ENTRYPOINT")
    return ImageRecipe(
        package_files={name: (context / name).read_text() for name in sources},
        command=gi.npm_ci_command(build),
        app_dir=workdir,
        entrypoint=json.loads(entrypoint),
    )


def install_tree(recipe: ImageRecipe, root: Path) -> Path:
    """Run the Dockerfile's ``npm ci`` on the files it copies, into a local directory.

    The tree is kept under ``root`` by a key of the package files and the command, so a later
    run reuses exactly what the same install produced.
    """
    assert set(recipe.package_files) == {"package.json", "package-lock.json"}, recipe
    key = hashlib.sha256(
        json.dumps([recipe.package_files, recipe.command], sort_keys=True).encode()
    ).hexdigest()[:16]
    target = root / key
    if (target / "node_modules" / "postgraphile" / "package.json").is_file():
        return target
    require_tool("node", "nodejs")
    npm = require_tool("npm", "npm")
    work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
    scratch = Path(tempfile.mkdtemp(prefix="pgplatform-npm-"))
    try:
        local_app = work / "app"
        local_app.mkdir()
        for name, text in recipe.package_files.items():
            (local_app / name).write_text(text)
        assert recipe.command[0] == "npm", recipe.command
        # This machine's way out to the registry (proxy, extra CA) is kept: the image build's
        # is the builder's, not part of the Dockerfile.
        env = {k: v for k, v in os.environ.items() if k in HOST_NETWORK_ENV}
        env.update(
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            HOME=str(scratch),
            npm_config_cache=str(scratch / ".npm"),
        )
        result = subprocess.run(
            [npm, *recipe.command[1:]],
            cwd=local_app,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"the Dockerfile's npm ci failed:\n{result.stdout}\n{result.stderr}")
        for name, text in recipe.package_files.items():
            assert (local_app / name).read_text() == text, f"npm ci changed {name}"
        os.replace(local_app, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def local_rc_file(rc_file: str, replacements: Mapping[str, str | int]) -> str:
    """The rendered rc file with only the given CONFIG values (paths, addresses) replaced."""
    match = re.search(r"^const CONFIG = (\{.*?^\});$", rc_file, re.MULTILINE | re.DOTALL)
    assert match is not None
    config = json.loads(match.group(1))
    for name, value in replacements.items():
        assert type(config.get(name)) is type(value), (name, config.get(name))
        config[name] = value
    return rc_file[: match.start(1)] + json.dumps(config, indent=2) + rc_file[match.end(1) :]


def local_args(args: list[str], *, db_host: str, db_port: int, port: int) -> list[str]:
    """The rendered arguments with the PgBouncer address and the listen address replaced."""
    out = list(args)
    connection = urlsplit(args[args.index("--connection") + 1])
    assert connection.scheme == "postgres", connection
    assert connection.password is None, connection
    netloc = f"{connection.username}@{db_host}:{db_port}"
    out[args.index("--connection") + 1] = urlunsplit(connection._replace(netloc=netloc))
    out[args.index("--host") + 1] = "127.0.0.1"
    out[args.index("--port") + 1] = str(port)
    changed = [i for i, (a, b) in enumerate(zip(args, out, strict=True)) if a != b]
    assert len(changed) <= 3, changed
    return out


def resolve_env(env: list[dict[str, Any]]) -> dict[str, str]:
    """The rendered EnvVars with each secretKeyRef filled in, as the kubelet would."""
    resolved = {}
    for var in env:
        if "value" in var:
            resolved[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            resolved[var["name"]] = SECRET_VALUES[(ref["name"], ref["key"])]
    return resolved


class PostGraphile:
    """One PostGraphile process run from a rendered pod; always stopped."""

    def __init__(
        self, pilot: DeployedPilot, app: Path, pgbouncer: PgBouncerProcess, jwks_file: Path
    ) -> None:
        self.pilot = pilot
        self.app = app
        self.port = free_port()
        args = pilot.server["args"]
        self.route = args[args.index("--graphql") + 1]
        self.graphiql_route = args[args.index("--graphiql") + 1] if "--graphiql" in args else None
        self.args = local_args(args, db_host=pgbouncer.host, db_port=pgbouncer.port, port=self.port)
        self.url = f"http://127.0.0.1:{self.port}{self.route}"
        self.metrics_port = free_port()
        self.config_dir = Path(tempfile.mkdtemp(prefix="pgplatform-graphql-"))
        self.log_file = self.config_dir / "postgraphile.log"
        self.jwks_file = jwks_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PostGraphile:
        server, mounts = self.pilot.server, self.pilot.mounts
        # The ConfigMap mount is the working directory, where the CLI finds its rc file.
        assert server["workingDir"] == mounts["config"], (server["workingDir"], mounts)
        rc = rc_config(self.pilot.rc_file)
        recipe = image_recipe()
        assert rc["appDir"] == recipe.app_dir, "the rc file loads modules from the image's tree"
        replacements: dict[str, str | int] = {"appDir": str(self.app)}
        if rc["metricsPort"] is not None:
            # The pod's metrics port and address, on this machine's loopback.
            replacements.update(metricsPort=self.metrics_port, metricsHost="127.0.0.1")
        if "jwks" in mounts:
            assert Path(rc["jwksFile"]).parent == Path(mounts["jwks"]), rc
            replacements["jwksFile"] = str(self.jwks_file)
        for name, text in self.pilot.files.items():
            (self.config_dir / name).write_text(text)
        (self.config_dir / ".postgraphilerc.js").write_text(
            local_rc_file(self.pilot.rc_file, replacements)
        )
        node = require_tool("node", "nodejs")
        command = server["command"]
        assert command[0] == "node", command
        # The pod's command is the image's ENTRYPOINT.
        assert command == recipe.entrypoint, (command, recipe.entrypoint)
        cli = _rewrite_prefix(command[1], recipe.app_dir, str(self.app))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **resolve_env(server["env"])}
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [node, cli, *self.args],
                cwd=self.config_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")
        return ""

    def wait_ready(self, token: str) -> None:
        """Until the schema is built: PostGraphile listens first and retries introspection."""
        deadline = time.monotonic() + STARTUP_SECONDS
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"PostGraphile exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, body = self.post("{ __typename }", token, timeout=2)
            except OSError as error:
                last = error
                time.sleep(0.2)
                continue
            if status == 200 and body.get("data") == {"__typename": "Query"}:
                return
            last = (status, body)
            time.sleep(0.2)
        pytest.fail(f"PostGraphile not ready after {STARTUP_SECONDS}s ({last}):\n{self.log()}")

    def post(
        self,
        query: str,
        token: str | None,
        *,
        timeout: float = 10,
        raw_auth: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json", **(headers or {})}
        if raw_auth is not None:
            headers["Authorization"] = raw_auth
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(  # noqa: S310 - a loopback URL built here
            self.url, data=json.dumps({"query": query}).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            payload = error.read()
            return error.code, json.loads(payload) if payload else {}

    def get(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Accept": "text/html"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        shutil.rmtree(self.config_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def npm_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's cache keeps installed trees between runs; without the cache plugin, a fresh dir."""
    cache: pytest.Cache | None = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("postgraphile")
    return cache.mkdir("pgplatform-postgraphile")


@pytest.fixture(scope="module")
def servers(
    npm_root: Path,
    pgbouncer: PgBouncerProcess,
    keys: Keys,
    staging_build: Path,
    prod_pilot_build: Path,
) -> Iterator[dict[str, PostGraphile]]:
    """staging's pilot (HS256) and prod's pilot configuration (JWKS), on the rw pool."""
    staging = deployed_pilot(staging_build)
    prod = deployed_pilot(prod_pilot_build)
    # Both run an image built from the same Dockerfile: one tree serves both servers.
    assert prod.server["command"] == staging.server["command"]
    app = install_tree(image_recipe(), npm_root)
    started: dict[str, PostGraphile] = {}
    try:
        for name, pilot in (("staging", staging), ("prod", prod)):
            started[name] = PostGraphile(pilot, app, pgbouncer, keys.jwks_file).start()
        started["staging"].wait_ready(
            keys.staging.token(keys.staging.claims(role="api_admin", sub="admin-1"))
        )
        started["prod"].wait_ready(
            keys.prod_rs256.token(keys.prod_rs256.claims(role="api_admin", sub="admin-1"))
        )
        yield started
    finally:
        for server in started.values():
            server.stop()


def rows_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    nodes = body["data"]["allAccounts"]["nodes"]
    return [(node["sub"], node["displayName"]) for node in nodes]


def assert_refused(status: int, body: dict[str, Any], expected_status: int) -> None:
    assert status == expected_status, (status, body)
    assert body.get("data") is None, body
    assert body.get("errors"), body


def test_the_servers_run_the_rendered_key_sources(servers: dict[str, PostGraphile]) -> None:
    """staging verifies with the Secret's HS256 key, prod's configuration with a JWKS file."""
    staging = rc_config(servers["staging"].pilot.rc_file)
    prod = rc_config(servers["prod"].pilot.rc_file)
    assert staging["jwtSecretEnv"] is not None
    assert staging["jwksFile"] is None
    assert prod["jwtSecretEnv"] is None
    assert prod["jwksFile"] is not None
    assert staging["defaultRole"] == "api_anonymous"
    assert prod["defaultRole"] is None
    assert staging["preRequest"] == prod["preRequest"] == "platform.pre_request"


# -- the same rows as PostgREST --------------------------------------------------------------------
CASES = {
    "user A": {"role": "api_user", "sub": "user-a"},
    "user B": {"role": "api_user", "sub": "user-b"},
    "editor": {"role": "api_editor", "sub": "editor-e"},
    "admin": {"role": "api_admin", "sub": "admin-1"},
    "missing sub": {"role": "api_user"},
    "unknown subject": {"role": "api_user", "sub": "nobody"},
}


@pytest.mark.parametrize("server", ["staging", "prod"])
@pytest.mark.parametrize("case", list(CASES))
def test_accounts_match_postgrest(
    servers: dict[str, PostGraphile], keys: Keys, rest: Conn, server: str, case: str
) -> None:
    signer = signer_for(keys, server)
    token_claims = signer.claims(**CASES[case])
    expected = postgrest_request(
        rest, token_claims, "SELECT sub, display_name FROM identity.accounts ORDER BY sub"
    )
    status, body = servers[server].post(ACCOUNTS_QUERY, signer.token(token_claims))
    if isinstance(expected, Refused):
        # pre_request refuses with insufficient_privilege; PostgREST answers 403.
        assert expected.sqlstate == "42501", expected
        assert_refused(status, body, 403)
    else:
        assert status == 200, body
        assert rows_of(body) == [tuple(row) for row in expected]


def test_cases_cover_own_rows_all_rows_and_refusal(keys: Keys, rest: Conn) -> None:
    """The reference itself: the policies must make the case table meaningful."""
    query = "SELECT sub FROM identity.accounts ORDER BY sub"
    claims = keys.staging.claims
    assert postgrest_request(rest, claims(**CASES["user A"]), query) == [("user-a",)]
    assert postgrest_request(rest, claims(**CASES["editor"]), query) == [("editor-e",)]
    assert len(postgrest_request(rest, claims(**CASES["admin"]), query)) == len(ACCOUNTS)
    assert isinstance(postgrest_request(rest, claims(**CASES["missing sub"]), query), Refused)


@pytest.mark.parametrize(
    "auth",
    [None, "roleless token"],
)
def test_staging_anonymous_requests_run_as_the_anonymous_role(
    servers: dict[str, PostGraphile], keys: Keys, rest: Conn, auth: str | None
) -> None:
    """No token, or one without a role, runs as api_anonymous as PostgREST's anon role does."""
    token = keys.staging.token(keys.staging.claims(sub="user-a")) if auth else None
    expected = postgrest_request(
        rest,
        {"role": "api_anonymous", **({"sub": "user-a"} if auth else {})},
        "SELECT sub, display_name FROM identity.accounts ORDER BY sub",
    )
    status, body = servers["staging"].post(ACCOUNTS_QUERY, token)
    assert status == 200, body
    assert rows_of(body) == [tuple(row) for row in expected] == []


# -- roles from the groups claim (staging: auth.baseRole api_anonymous, auth.groupRoles) ---------
GROUP_CASES = {
    "admins": ("admin-g", ["admins"]),
    "several groups, highest wins": ("editor-e", ["readers", "editors"]),
    "reader": ("user-b", ["readers"]),
    "unknown group stays anonymous": ("user-a", ["unknown"]),
    "rogue mapping refused": ("user-a", ["rogue"]),
}


@pytest.fixture
def rogue_mapping(database: PgCluster) -> Iterator[None]:
    """A mapping the admin wrote by mistake: a group to a role that is not an API role."""
    with database.connect(DATABASE) as admin:
        admin.execute("INSERT INTO platform.group_role VALUES ('rogue', 'pgplatform_owner', 99)")
    yield
    with database.connect(DATABASE) as admin:
        admin.execute("DELETE FROM platform.group_role WHERE group_name = 'rogue'")


@pytest.mark.parametrize("case", list(GROUP_CASES))
def test_roles_from_groups_match_postgrest(
    servers: dict[str, PostGraphile], keys: Keys, rest: Conn, rogue_mapping: None, case: str
) -> None:
    """A token without a role claim: PostGraphile and PostgREST elevate it to the same role."""
    sub, groups = GROUP_CASES[case]
    token_claims = keys.staging.claims(sub=sub, groups=groups)
    expected = postgrest_request(
        rest,
        {**token_claims, "role": "api_anonymous"},
        "SELECT sub, display_name FROM identity.accounts ORDER BY sub",
    )
    status, body = servers["staging"].post(ACCOUNTS_QUERY, keys.staging.token(token_claims))
    if case == "rogue mapping refused":
        assert expected == Refused("42501")
        assert_refused(status, body, 403)
        return
    assert status == 200, body
    assert rows_of(body) == [tuple(row) for row in expected]
    seen = {
        "admins": list(ACCOUNTS),
        "several groups, highest wins": [("editor-e", "Eve")],
        "reader": [("user-b", "Bob")],
        "unknown group stays anonymous": [],
    }[case]
    assert sorted(rows_of(body)) == sorted(seen)


def test_forged_role_claim_with_groups_is_refused(
    servers: dict[str, PostGraphile], keys: Keys
) -> None:
    for forged in ("pgplatform_owner", "postgraphile"):
        token = keys.staging.token(keys.staging.claims(role=forged, sub="x", groups=["admins"]))
        status, body = servers["staging"].post(ACCOUNTS_QUERY, token)
        assert_refused(status, body, 403)


def test_es256_key_of_the_jwks_is_accepted(servers: dict[str, PostGraphile], keys: Keys) -> None:
    signer = keys.prod_es256
    status, body = servers["prod"].post(
        ACCOUNTS_QUERY, signer.token(signer.claims(role="api_user", sub="user-b"))
    )
    assert status == 200, body
    assert rows_of(body) == [("user-b", "Bob")]


@pytest.mark.parametrize("server", ["staging", "prod"])
def test_audience_rules_follow_postgrest(
    servers: dict[str, PostGraphile], keys: Keys, server: str
) -> None:
    """No aud, or an aud list containing ours, is accepted; PostgREST does the same."""
    signer = signer_for(keys, server)
    base = {"role": "api_user", "sub": "user-a"}
    now = int(time.time())
    for token_claims in (
        {**base, "exp": now + 60},
        {**base, "exp": now + 60, "aud": ["other", signer.audience]},
        {**base, "exp": now + 60, "aud": []},
    ):
        status, body = servers[server].post(ACCOUNTS_QUERY, signer.token(token_claims))
        assert status == 200, (token_claims, body)
        assert rows_of(body) == [("user-a", "Alice")]


# -- refused tokens never see data -----------------------------------------------------------------
def refused_tokens(keys: Keys, server: str) -> dict[str, str]:
    signer = signer_for(keys, server)
    claims, aud = signer.claims, signer.audience
    now = int(time.time())
    admin = {"role": "api_admin", "sub": "admin-1"}
    tokens = {
        # Beyond PostgREST's 30 s of clock skew.
        "expired": signer.token({**admin, "aud": aud, "exp": now - 45}),
        "not yet valid": signer.token({**admin, "aud": aud, "nbf": now + 120}),
        "issued in the future": signer.token({**admin, "aud": aud, "iat": now + 120}),
        "wrong audience": signer.token(claims(**admin, aud="someone-else")),
        "audience of wrong type": signer.token(claims(**admin, aud=42)),
        "exp of wrong type": signer.token({**admin, "aud": aud, "exp": "tomorrow"}),
    }
    if server == "staging":
        tokens["bad signature"] = Signer(
            "HS256", "another-secret-that-is-long-enough!!", aud
        ).token(claims(**admin))
        tokens["unknown kid"] = Signer("HS256", HS256_SECRET, aud, "k-9").token(claims(**admin))
    else:
        tokens["no role and no anonymous role"] = signer.token(claims(sub="admin-1"))
        tokens["bad signature"] = keys.prod_impostor.token(claims(**admin))
        tokens["unknown kid"] = Signer("RS256", signer.key, aud, "rsa-9").token(claims(**admin))
        # Algorithm confusion: the public key used as an HMAC secret.
        public_pem = (
            signer.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        tokens["HS256 with the public key"] = _raw_token(
            {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(**admin), public_pem
        )
        tokens["alg none"] = _raw_token({"alg": "none", "typ": "JWT"}, claims(**admin), None)
    return tokens


def _raw_token(header: Mapping[str, Any], payload: Mapping[str, Any], secret: str | None) -> str:
    """A token built by hand: PyJWT refuses both ``alg: none`` and PEM-looking HMAC keys."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        f"{b64(json.dumps(dict(header)).encode())}.{b64(json.dumps(dict(payload)).encode())}"
    )
    if secret is None:
        return f"{signing_input}."
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize("server", ["staging", "prod"])
def test_refused_tokens_get_401_and_no_data(
    servers: dict[str, PostGraphile], keys: Keys, server: str
) -> None:
    for name, token in refused_tokens(keys, server).items():
        status, body = servers[server].post(ACCOUNTS_QUERY, token)
        assert status == 401, (name, status, body)
        assert body.get("data") is None, (name, body)
        assert body.get("errors"), (name, body)


@pytest.mark.parametrize(
    ("server", "auth"),
    [
        ("prod", None),  # no anonymous role in prod
        ("prod", "Bearer "),
        ("prod", "Bearer not.a.jwt"),
        ("staging", "Bearer "),
        ("staging", "Bearer a.b"),
    ],
)
def test_missing_or_malformed_tokens_are_refused(
    servers: dict[str, PostGraphile], server: str, auth: str | None
) -> None:
    status, body = servers[server].post(ACCOUNTS_QUERY, None, raw_auth=auth)
    assert_refused(status, body, 401)


@pytest.mark.parametrize("server", ["staging", "prod"])
def test_role_the_authenticator_may_not_become_is_refused(
    servers: dict[str, PostGraphile], keys: Keys, server: str
) -> None:
    signer = signer_for(keys, server)
    for role in ("postgres", "pgplatform_owner", "postgrest"):
        token = signer.token(signer.claims(role=role, sub="admin-1"))
        status, body = servers[server].post(ACCOUNTS_QUERY, token)
        assert_refused(status, body, 403)


def test_the_authenticator_itself_reads_nothing(
    servers: dict[str, PostGraphile], keys: Keys
) -> None:
    """A token naming ``postgraphile`` stays the NOINHERIT authenticator: no privilege at all."""
    signer = keys.staging
    token = signer.token(signer.claims(role="postgraphile", sub="admin-1"))
    _, body = servers["staging"].post(ACCOUNTS_QUERY, token)
    assert (body.get("data") or {}).get("allAccounts") is None, body
    assert "permission denied" in json.dumps(body.get("errors")), body


# -- writes: the same role and claims reach triggers and policies ----------------------------------
def test_mutation_runs_as_the_token_role_with_its_claims(
    servers: dict[str, PostGraphile], keys: Keys, database: PgCluster
) -> None:
    signer = keys.prod_rs256
    token = signer.token(signer.claims(role="api_editor", sub="editor-gql"))
    mutation = (
        'mutation { createAccount(input: {account: {displayName: "Graph"}}) '
        "{ account { sub displayName } } }"
    )
    status, body = servers["prod"].post(mutation, token)
    assert status == 200, body
    assert body["data"]["createAccount"]["account"] == {"sub": "editor-gql", "displayName": "Graph"}
    with database.connect(DATABASE) as conn:
        # Staging masks identity.accounts.email: the table behind the view is identity_private's
        # (docs/masking.md), and the audit trigger records the table it fired on.
        row = conn.execute(
            "SELECT op, sub, role FROM audit.log"
            " WHERE schema_name IN ('identity', 'identity_private')"
            " AND table_name = 'accounts' AND new_row ->> 'sub' = 'editor-gql'"
        ).fetchone()
    assert row == ("INSERT", "editor-gql", "api_editor")

    forged = (
        'mutation { createAccount(input: {account: {sub: "user-a", displayName: "Forged"}}) '
        "{ account { sub } } }"
    )
    status, body = servers["prod"].post(forged, token)
    assert (body.get("data") or {}).get("createAccount") is None, body
    assert "row-level security" in json.dumps(body["errors"]), body


@pytest.mark.parametrize("server", ["staging", "prod"])
def test_requests_are_cancelled_at_the_role_statement_timeout(
    servers: dict[str, PostGraphile], keys: Keys, database: PgCluster, server: str
) -> None:
    """SET ROLE does not apply the role's settings: the pilot sets statement_timeout itself."""
    with database.connect(DATABASE) as conn:
        limits = dict(
            conn.execute(
                "SELECT r.rolname, s.setting FROM pg_roles r, "
                "LATERAL unnest(r.rolconfig) c, LATERAL (SELECT split_part(c, '=', 2)) s(setting) "
                "WHERE c LIKE 'statement_timeout=%' AND r.rolname IN ('api_user', 'api_editor')"
            ).fetchall()
        )
    assert int(limits["api_user"]) < SLOW_SECONDS * 1000 < int(limits["api_editor"])
    signer = signer_for(keys, server)
    query = f"{{ waitFor(seconds: {SLOW_SECONDS}) }}"
    user = signer.token(signer.claims(role="api_user", sub="user-a"))
    started = time.monotonic()
    status, body = servers[server].post(query, user, timeout=60)
    elapsed = time.monotonic() - started
    assert (body.get("data") or {}).get("waitFor") is None, body
    assert "statement timeout" in json.dumps(body.get("errors")), (status, body)
    # Cancelled by the database at the role's limit, not by the pooler's later backstop.
    assert elapsed < SLOW_SECONDS, elapsed
    editor = signer.token(signer.claims(role="api_editor", sub="editor-e"))
    status, body = servers[server].post(query, editor, timeout=60)
    assert status == 200, body
    assert body["data"] == {"waitFor": SLOW_SECONDS}


def test_graphiql_is_served_only_where_rendered(servers: dict[str, PostGraphile]) -> None:
    """staging renders GraphiQL on its own route; prod never serves it."""
    staging = servers["staging"]
    assert staging.graphiql_route == f"{staging.route}/graphiql"
    status, page = staging.get(staging.graphiql_route)
    assert status == 200
    assert "graphiql" in page.lower()
    prod = servers["prod"]
    assert prod.graphiql_route is None
    assert "--disable-graphiql" in prod.args
    for path in ("/graphiql", f"{prod.route}/graphiql"):
        assert prod.get(path)[0] == 404, path


def test_sessions_are_attributed_to_the_pilot(
    servers: dict[str, PostGraphile], keys: Keys, database: PgCluster
) -> None:
    """PgBouncer passes the rendered application_name: pg_stat_activity names the pilot."""
    signer = keys.staging
    servers["staging"].post(ACCOUNTS_QUERY, signer.token(signer.claims(role="api_user", sub="x")))
    with database.connect(DATABASE) as conn:
        users = {
            row[0]
            for row in conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE application_name LIKE 'postgraphile%'"
            )
        }
    assert "postgraphile" in users


RC_PROBE = """
const rc = require(process.argv[1]);
(async () => {
  const out = {};
  for (const [name, token] of Object.entries(JSON.parse(process.env.TOKENS))) {
    try {
      const req = { headers: { authorization: `Bearer ${token}` } };
      out[name] = { settings: await rc.options.pgSettings(req) };
    } catch (error) {
      out[name] = { status: error.status };
    }
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


def test_staging_secret_may_be_an_oct_key_set(
    servers: dict[str, PostGraphile], keys: Keys, tmp_path: Path
) -> None:
    """As PostgREST's jwt-secret, the Secret may hold a JWK Set of ``oct`` keys (the rotation
    overlap of docs/jwt-keys.md): each verifies the tokens naming its kid, and only those."""
    staging = servers["staging"]
    rc_file = tmp_path / ".postgraphilerc.js"
    rc_file.write_text(local_rc_file(staging.pilot.rc_file, {"appDir": str(staging.app)}))
    new, old = b"n" * 40, b"o" * 40

    def oct_key(kid: str, secret: bytes) -> dict[str, str]:
        return {"kty": "oct", "kid": kid, "k": base64.urlsafe_b64encode(secret).decode()}

    key_set = {"keys": [oct_key("2026-11", new), oct_key("2026-05", old)]}
    claims = keys.staging.claims(role="api_user", sub="user-a")
    tokens = {
        "new key": jwt.encode(claims, new, algorithm="HS256", headers={"kid": "2026-11"}),
        "old key": jwt.encode(claims, old, algorithm="HS256", headers={"kid": "2026-05"}),
        "no kid": jwt.encode(claims, old, algorithm="HS256"),
        "kid of the other key": jwt.encode(
            claims, new, algorithm="HS256", headers={"kid": "2026-05"}
        ),
        "the plain secret": keys.staging.token(claims),
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        rc_config(staging.pilot.rc_file)["jwtSecretEnv"]: json.dumps(key_set),
        "TOKENS": json.dumps(tokens),
    }
    result = subprocess.run(
        [require_tool("node", "nodejs"), "-e", RC_PROBE, str(rc_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome = json.loads(result.stdout)
    for name in ("new key", "old key", "no kid"):
        assert outcome[name]["settings"]["role"] == "api_user", (name, outcome)
        assert json.loads(outcome[name]["settings"]["request.jwt.claims"])["sub"] == "user-a"
    for name in ("kid of the other key", "the plain secret"):
        assert outcome[name] == {"status": 401}, (name, outcome)


# -- metrics, request log and trace context (the rc file's server plugin) ------------------------
METRIC_LIST = ROOT / "tests" / "data" / "metrics" / "pgplatform-graphql-plugin-4.14.1.txt"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(server: PostGraphile) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The plugin's /metrics, as (name, labels) -> value."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_metrics_count_each_operation_with_its_status_and_errors(
    servers: dict[str, PostGraphile], keys: Keys
) -> None:
    server = servers["staging"]
    token = keys.staging.token(keys.staging.claims(role="api_user", sub="user-a"))
    before = scrape(server)
    op = {"operation": "MetricsAccounts", "operation_type": "query"}
    for _ in range(3):
        status, body = server.post("query MetricsAccounts { allAccounts { nodes { sub } } }", token)
        assert status == 200, body
    status, _ = server.post("query MetricsRefused { allAccounts { nodes { sub } } }", "x.y.z")
    assert status == 401
    status, _ = server.post("query MetricsBroken { allAccounts { nodes { noSuchField } } }", token)
    assert status == 400
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pgplatform_graphql_requests_total", **op, status="200") == 3
    assert delta("pgplatform_graphql_request_duration_seconds_count", **op) == 3
    assert delta("pgplatform_graphql_request_duration_seconds_bucket", **op, le="+Inf") == 3
    assert delta("pgplatform_graphql_request_duration_seconds_sum", **op) > 0
    assert delta("pgplatform_graphql_errors_total", **op) == 0
    refused = {"operation": "MetricsRefused", "operation_type": "query"}
    assert delta("pgplatform_graphql_requests_total", **refused, status="401") == 1
    assert delta("pgplatform_graphql_errors_total", **refused) == 1
    broken = {"operation": "MetricsBroken", "operation_type": "query"}
    assert delta("pgplatform_graphql_requests_total", **broken, status="400") == 1
    assert delta("pgplatform_graphql_errors_total", **broken) == 1


def test_every_listed_metric_is_served_by_the_real_plugin(
    servers: dict[str, PostGraphile], keys: Keys
) -> None:
    """tests/data/metrics/pgplatform-graphql-plugin-4.14.1.txt names only real series."""
    from components.render.metrics_catalog import parse_metric_list
    from components.render.postgraphile import METRIC_NAMES

    server = servers["prod"]
    token = keys.prod_rs256.token(keys.prod_rs256.claims(role="api_admin", sub="admin-1"))
    status, _ = server.post("query Listed { allAccounts { totalCount } }", token)
    assert status == 200
    status, _ = server.post("query ListedRefused { allAccounts { totalCount } }", None)
    assert status == 401  # prod: no anonymous access; a labelled counter appears once counted
    served = {name for name, _ in scrape(server)}
    listed = parse_metric_list(METRIC_LIST.read_text())
    assert not listed - served, sorted(listed - served)
    for name in METRIC_NAMES:
        assert name in listed or f"{name}_bucket" in listed, name


def test_operation_names_are_bounded(servers: dict[str, PostGraphile], keys: Keys) -> None:
    """Past maxOperationNames distinct names, new ones are counted as "other"."""
    server = servers["staging"]
    token = keys.staging.token(keys.staging.claims(role="api_user", sub="user-a"))
    limit = rc_config(server.pilot.rc_file)["maxOperationNames"]
    for index in range(limit + 5):
        status, _ = server.post(f"query Bounded{index} {{ __typename }}", token)
        assert status == 200
    operations = {
        dict(labels).get("operation")
        for name, labels in scrape(server)
        if name == "pgplatform_graphql_requests_total"
    }
    assert len(operations) <= limit + 1
    assert "other" in operations


def test_traceparent_reaches_the_database_and_the_request_log(
    servers: dict[str, PostGraphile], keys: Keys, database: PgCluster
) -> None:
    """The gateway's traceparent is set in the request's transaction (request.traceparent and
    application_name), so PostgreSQL's own log lines of that request carry it; the plugin's JSON
    request line carries it too."""
    server = servers["staging"]
    token = keys.staging.token(keys.staging.claims(role="api_user", sub="user-a"))
    with database.connect() as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] app=%a '")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)  # the postmaster signals its backends; they reload between statements
        status, body = server.post(
            "query Traced { allAccounts { nodes { sub } } }",
            token,
            headers={"traceparent": TRACEPARENT, "X-Request-Id": "req-42"},
        )
        assert status == 200, body
        untraced, _ = server.post(
            "query Untraced { allAccounts { nodes { sub } } }",
            token,
            # An all-zero trace id is invalid: dropped.
            headers={
                "traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "X-Request-Id": "req-43",
            },
        )
        assert untraced == 200
    finally:
        with database.connect() as conn:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("ALTER SYSTEM RESET log_line_prefix")
            conn.execute("SELECT pg_reload_conf()")
    log = database.server_log()
    traced = [line for line in log.splitlines() if f"app=graphql:{TRACEPARENT} " in line]
    # The pre-request check and the query itself run under the request's trace context.
    assert any("statement: select platform.pre_request()" in line for line in traced), log[-3000:]
    assert any("statement: with __local_0__" in line for line in traced), log[-3000:]
    assert any(
        "= 'request.traceparent'" in line and f"= '{TRACEPARENT}'" in line
        for line in log.splitlines()
    ), "request.traceparent is not set in the transaction"
    assert "00000000000000000000000000000000" not in log
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in server.log().splitlines() if x.startswith('{"time"')]
        entries = {entry["request_id"]: entry for entry in lines}
        if "req-43" in entries:
            break
        time.sleep(0.1)
    traced_entry = entries["req-42"]
    # The log keeps the client's operation name even where the metrics say "other".
    assert traced_entry["operation"] == "Traced"
    assert traced_entry["traceparent"] == TRACEPARENT
    assert traced_entry["role"] == "api_user"
    assert traced_entry["status"] == 200
    assert traced_entry["duration_ms"] > 0
    assert entries["req-43"]["traceparent"] is None
