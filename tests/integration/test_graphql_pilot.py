"""The GraphQL pilot: the real PostGraphile, started exactly as the rendered Deployment starts it.

PostGraphile (npm, the tree pinned by ``tests/graphql/package-lock.json``) runs the rendered
command, arguments, environment and ``.postgraphilerc.js`` against the prod access plan, the
platform baseline and the example ``identity`` domain, through a real PgBouncer started from the
rendered ``pgbouncer.ini`` in front of a TLS-only PostgreSQL. For each case of claims the rows it
returns must be exactly the rows of PostgREST's per-request transaction (role switch, claims,
``platform.pre_request()``) run as the PostgREST authenticator with psycopg; refused tokens must
never see data. Two instances cover both key types PostgREST accepts: an HS256 secret and a JWKS
file (RS256 and ES256 keys).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg import sql

from components.render import postgraphile as pgr
from components.render.baseline import stack_sql_files
from components.render.pgbouncer import PgBouncerInput, render_pgbouncer_ini, render_userlist
from tests.integration.pg import PgCluster, free_port, running_cluster
from tests.integration.pgbouncer import PgBouncerProcess
from tests.tooling import require_tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAPHQL_DIR = ROOT / "tests" / "graphql"
FIXTURES = ROOT / "tests" / "fixtures"
DOMAINS = ("identity", "content", "analytics")
DATABASE = "app"
AUDIENCE = "pgplatform-graphql-test"
PASSWORDS = {
    "postgraphile": "graphql-authenticator-test-password",
    "postgrest": "rest-authenticator-test-password",
    "pgbouncer_auth": "lookup-test-password",
}
HS256_SECRET = "graphql-pilot-test-secret-of-more-than-32-chars"
ACCOUNTS = (("user-a", "Alice"), ("user-b", "Bob"), ("editor-e", "Eve"))
ACCOUNTS_QUERY = "{ allAccounts(orderBy: SUB_ASC) { nodes { sub displayName } } }"
STARTUP_SECONDS = 90
# The rendered PgBouncer, with the deployed host names (the test process rewrites only those).
PGBOUNCER = PgBouncerInput(
    database=DATABASE,
    rw_host="pgplatform-db-rw.pgplatform.svc.cluster.local",
    server_tls_ca_file="/etc/pgbouncer/server-ca/ca.crt",
)

Conn = psycopg.Connection[Any]


# -- keys ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signer:
    """How tokens for one PostGraphile instance are signed."""

    algorithm: str
    key: Any
    kid: str | None = None

    def token(self, claims: Mapping[str, Any]) -> str:
        headers = {"kid": self.kid} if self.kid is not None else None
        return jwt.encode(dict(claims), self.key, algorithm=self.algorithm, headers=headers)


@dataclass(frozen=True)
class Keys:
    hs256: Signer
    rs256: Signer
    es256: Signer
    rs256_impostor: Signer  # another RSA key claiming the published kid
    jwks_file: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
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
        hs256=Signer("HS256", HS256_SECRET),
        rs256=Signer("RS256", rsa_key, "rsa-1"),
        es256=Signer("ES256", ec_key, "ec-1"),
        rs256_impostor=Signer("RS256", impostor, "rsa-1"),
        jwks_file=jwks_file,
    )


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"aud": AUDIENCE, "iat": now, "exp": now + 300, **extra}


# -- database and pooler ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def database(rendered_stack: Callable[[str], Path]) -> Iterator[PgCluster]:
    """prod's access plan, the baseline and the example domains on a TLS-only cluster."""
    access = rendered_stack("prod") / "sql" / "010_access.sql"
    bundle = [(access.name, access.read_text()), *stack_sql_files(DOMAINS)]
    fixtures = [(path.name, path.read_text()) for path in sorted(FIXTURES.glob("*.sql"))]
    with running_cluster(tls_only=True) as cluster:
        cluster.create_database(DATABASE)
        cluster.apply_sql(DATABASE, [*bundle, *fixtures])
        with cluster.connect(DATABASE) as conn:
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(PASSWORDS),)
                )
            }
            missing = sorted(set(PASSWORDS) - present)
            assert not missing, f"the prod access plan (010_access.sql) creates no {missing}"
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
        yield cluster


@pytest.fixture(scope="module")
def pgbouncer(database: PgCluster) -> Iterator[PgBouncerProcess]:
    with PgBouncerProcess(
        render_pgbouncer_ini(PGBOUNCER),
        render_userlist({"pgbouncer_auth": PASSWORDS["pgbouncer_auth"]}),
        server_host=database.host,
        server_port=database.port,
        files={"server_tls_ca_file": database.ca_file},
    ) as process:
        yield process


@pytest.fixture
def rest(pgbouncer: PgBouncerProcess) -> Iterator[Conn]:
    """The PostgREST authenticator on the same rw pool PostGraphile uses."""
    with pgbouncer.connect("postgrest", PASSWORDS["postgrest"], PGBOUNCER.rw_pool) as conn:
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


# -- PostGraphile ----------------------------------------------------------------------------------
def ensure_node_modules() -> None:
    """``npm ci`` the pinned tree with the Deployment's install command when it is not there."""
    require_tool("node", "nodejs")
    npm = require_tool("npm", "npm")
    installed = GRAPHQL_DIR / "node_modules" / "postgraphile" / "package.json"
    if installed.is_file():
        version = json.loads(installed.read_text()).get("version")
        if version == pgr.POSTGRAPHILE_VERSION:
            return
    # The install step's command with this checkout as app_dir (npm from PATH).
    command = pgr.install_command(base_input(app_dir=str(GRAPHQL_DIR)))
    result = subprocess.run(
        [npm, *command[1:]], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {GRAPHQL_DIR} failed:\n{result.stdout}\n{result.stderr}")


def base_input(**overrides: Any) -> pgr.PostgraphileInput:
    values: dict[str, Any] = {
        "schemas": ("identity",),
        "db_host": "127.0.0.1",
        "db_port": 6432,
        "db_name": PGBOUNCER.rw_pool,
        "db_password": pgr.SecretKeyRef(name="graphql-db", key="password"),
        "db_sslmode": "disable",
        "jwt_audience": AUDIENCE,
        "jwt_secret": pgr.SecretKeyRef(name="graphql-jwt", key="secret"),
        "listen_host": "127.0.0.1",
        "app_dir": str(GRAPHQL_DIR),
    }
    values.update(overrides)
    return pgr.PostgraphileInput(**values)


SECRET_VALUES = {
    ("graphql-db", "password"): PASSWORDS["postgraphile"],
    ("graphql-jwt", "secret"): HS256_SECRET,
}


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
    """One PostGraphile process run from the rendered container spec; always stopped."""

    def __init__(self, inp: pgr.PostgraphileInput) -> None:
        self.inp = inp
        self.url = f"http://127.0.0.1:{inp.port}{inp.graphql_route}"
        self.log_file = Path(inp.config_dir) / "postgraphile.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PostGraphile:
        for name, text in pgr.config_files(self.inp).items():
            (Path(self.inp.config_dir) / name).write_text(text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **resolve_env(
            pgr.container_env(self.inp)
        )}  # fmt: skip
        node = require_tool("node", "nodejs")
        command = pgr.container_command(self.inp)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [node, *command[1:], *pgr.container_args(self.inp)],
                cwd=self.inp.config_dir,  # the Deployment's workingDir: the ConfigMap mount
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
        self, query: str, token: str | None, *, timeout: float = 10, raw_auth: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
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

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture(scope="module")
def servers(pgbouncer: PgBouncerProcess, keys: Keys) -> Iterator[dict[str, PostGraphile]]:
    """Two instances on the rw pool: one with the HS256 secret, one with the JWKS file."""
    ensure_node_modules()
    started: dict[str, PostGraphile] = {}
    dirs = []
    try:
        for name, key_input in (
            ("hs256", {"jwt_secret": pgr.SecretKeyRef(name="graphql-jwt", key="secret")}),
            ("jwks", {"jwt_secret": None, "jwks_file": str(keys.jwks_file)}),
        ):
            config_dir = Path(tempfile.mkdtemp(prefix=f"pgplatform-graphql-{name}-"))
            dirs.append(config_dir)
            inp = base_input(
                db_host=pgbouncer.host,
                db_port=pgbouncer.port,
                db_name=PGBOUNCER.rw_pool,
                port=free_port(),
                config_dir=str(config_dir),
                **key_input,
            )
            started[name] = PostGraphile(inp).start()
        admin = claims(role="api_admin", sub="admin-1")
        started["hs256"].wait_ready(keys.hs256.token(admin))
        started["jwks"].wait_ready(keys.rs256.token(admin))
        yield started
    finally:
        for server in started.values():
            server.stop()
        for directory in dirs:
            shutil.rmtree(directory, ignore_errors=True)


def signer_for(keys: Keys, server: str) -> Signer:
    return keys.hs256 if server == "hs256" else keys.rs256


def rows_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    nodes = body["data"]["allAccounts"]["nodes"]
    return [(node["sub"], node["displayName"]) for node in nodes]


def assert_refused(status: int, body: dict[str, Any], expected_status: int) -> None:
    assert status == expected_status, (status, body)
    assert body.get("data") is None, body
    assert body.get("errors"), body


# -- the same rows as PostgREST --------------------------------------------------------------------
CASES = {
    "user A": {"role": "api_user", "sub": "user-a"},
    "user B": {"role": "api_user", "sub": "user-b"},
    "editor": {"role": "api_editor", "sub": "editor-e"},
    "admin": {"role": "api_admin", "sub": "admin-1"},
    "missing sub": {"role": "api_user"},
    "unknown subject": {"role": "api_user", "sub": "nobody"},
}


@pytest.mark.parametrize("server", ["hs256", "jwks"])
@pytest.mark.parametrize("case", list(CASES))
def test_accounts_match_postgrest(
    servers: dict[str, PostGraphile], keys: Keys, rest: Conn, server: str, case: str
) -> None:
    token_claims = claims(**CASES[case])
    expected = postgrest_request(
        rest, token_claims, "SELECT sub, display_name FROM identity.accounts ORDER BY sub"
    )
    status, body = servers[server].post(
        ACCOUNTS_QUERY, signer_for(keys, server).token(token_claims)
    )
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
    assert postgrest_request(rest, claims(**CASES["user A"]), query) == [("user-a",)]
    assert postgrest_request(rest, claims(**CASES["editor"]), query) == [("editor-e",)]
    assert len(postgrest_request(rest, claims(**CASES["admin"]), query)) == len(ACCOUNTS)
    assert isinstance(postgrest_request(rest, claims(**CASES["missing sub"]), query), Refused)


def test_es256_key_of_the_jwks_is_accepted(servers: dict[str, PostGraphile], keys: Keys) -> None:
    status, body = servers["jwks"].post(
        ACCOUNTS_QUERY, keys.es256.token(claims(role="api_user", sub="user-b"))
    )
    assert status == 200, body
    assert rows_of(body) == [("user-b", "Bob")]


def test_audience_rules_follow_postgrest(servers: dict[str, PostGraphile], keys: Keys) -> None:
    """No aud, or an aud list containing ours, is accepted; PostgREST does the same."""
    base = {"role": "api_user", "sub": "user-a"}
    now = int(time.time())
    for token_claims in (
        {**base, "exp": now + 60},
        {**base, "exp": now + 60, "aud": ["other", AUDIENCE]},
        {**base, "exp": now + 60, "aud": []},
    ):
        status, body = servers["hs256"].post(ACCOUNTS_QUERY, keys.hs256.token(token_claims))
        assert status == 200, (token_claims, body)
        assert rows_of(body) == [("user-a", "Alice")]


# -- refused tokens never see data -----------------------------------------------------------------
def refused_tokens(keys: Keys, server: str) -> dict[str, str]:
    signer = signer_for(keys, server)
    now = int(time.time())
    admin = {"role": "api_admin", "sub": "admin-1"}
    tokens = {
        # Beyond PostgREST's 30 s of clock skew.
        "expired": signer.token({**admin, "aud": AUDIENCE, "exp": now - 45}),
        "not yet valid": signer.token({**admin, "aud": AUDIENCE, "nbf": now + 120}),
        "issued in the future": signer.token({**admin, "aud": AUDIENCE, "iat": now + 120}),
        "wrong audience": signer.token(claims(**admin, aud="someone-else")),
        "audience of wrong type": signer.token(claims(**admin, aud=42)),
        "exp of wrong type": signer.token({**admin, "aud": AUDIENCE, "exp": "tomorrow"}),
        "no role and no anonymous role": signer.token(claims(sub="admin-1")),
    }
    if server == "hs256":
        tokens["bad signature"] = Signer("HS256", "another-secret-that-is-long-enough!!").token(
            claims(**admin)
        )
        tokens["unknown kid"] = Signer("HS256", HS256_SECRET, "k-9").token(claims(**admin))
    else:
        tokens["bad signature"] = keys.rs256_impostor.token(claims(**admin))
        tokens["unknown kid"] = Signer("RS256", keys.rs256.key, "rsa-9").token(claims(**admin))
        # Algorithm confusion: the public key used as an HMAC secret.
        public_pem = (
            keys.rs256.key.public_key()
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


@pytest.mark.parametrize("server", ["hs256", "jwks"])
def test_refused_tokens_get_401_and_no_data(
    servers: dict[str, PostGraphile], keys: Keys, server: str
) -> None:
    for name, token in refused_tokens(keys, server).items():
        status, body = servers[server].post(ACCOUNTS_QUERY, token)
        assert status == 401, (name, status, body)
        assert body.get("data") is None, (name, body)
        assert body.get("errors"), (name, body)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (None, 401),  # prod: no anonymous role
        ("Bearer ", 401),
        ("Bearer not.a.jwt", 401),
        ("Bearer a.b", 401),
    ],
)
def test_missing_or_malformed_tokens_are_refused(
    servers: dict[str, PostGraphile], auth: str | None, expected: int
) -> None:
    status, body = servers["hs256"].post(ACCOUNTS_QUERY, None, raw_auth=auth)
    assert_refused(status, body, expected)


def test_role_the_authenticator_may_not_become_is_refused(
    servers: dict[str, PostGraphile], keys: Keys
) -> None:
    for role in ("postgres", "pgplatform_owner", "postgrest"):
        token = keys.hs256.token(claims(role=role, sub="admin-1"))
        status, body = servers["hs256"].post(ACCOUNTS_QUERY, token)
        assert_refused(status, body, 403)


# -- writes: the same role and claims reach triggers and policies ----------------------------------
def test_mutation_runs_as_the_token_role_with_its_claims(
    servers: dict[str, PostGraphile], keys: Keys, database: PgCluster
) -> None:
    token = keys.rs256.token(claims(role="api_editor", sub="editor-gql"))
    mutation = (
        'mutation { createAccount(input: {account: {displayName: "Graph"}}) '
        "{ account { sub displayName } } }"
    )
    status, body = servers["jwks"].post(mutation, token)
    assert status == 200, body
    assert body["data"]["createAccount"]["account"] == {"sub": "editor-gql", "displayName": "Graph"}
    with database.connect(DATABASE) as conn:
        row = conn.execute(
            "SELECT op, sub, role FROM audit.log WHERE schema_name = 'identity' "
            "AND table_name = 'accounts' AND new_row ->> 'sub' = 'editor-gql'"
        ).fetchone()
    assert row == ("INSERT", "editor-gql", "api_editor")

    forged = (
        'mutation { createAccount(input: {account: {sub: "user-a", displayName: "Forged"}}) '
        "{ account { sub } } }"
    )
    status, body = servers["jwks"].post(forged, token)
    assert (body.get("data") or {}).get("createAccount") is None, body
    assert "row-level security" in json.dumps(body["errors"]), body


def test_graphiql_is_not_served_when_disabled(servers: dict[str, PostGraphile]) -> None:
    inp = servers["hs256"].inp
    assert not inp.graphiql
    request = urllib.request.Request(
        f"http://127.0.0.1:{inp.port}/graphiql", headers={"Accept": "text/html"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310
    assert refused.value.code == 404


def test_rendered_input_matches_what_ran(servers: dict[str, PostGraphile]) -> None:
    """The processes ran the rendered rc file, not some other configuration."""
    for server in servers.values():
        on_disk = (Path(server.inp.config_dir) / pgr.RC_FILE).read_text()
        assert on_disk == pgr.render_rc_file(server.inp)
