"""PostGraphile (GraphQL pilot) container: command, arguments, environment and config files.

The pilot serves the ``identity`` schema over GraphQL with the same JWTs and the very same row
level security as PostgREST. PostGraphile 4.14 (the 4.x line this rc file and the tests are
written for; 5.x is a different API) runs from the pilot image and is started through its
CLI, which loads ``.postgraphilerc.js`` from its working directory. That file is rendered here:
it verifies the bearer JWT with PostgREST's rules (HS256 secret or a JWKS file, audience,
30 s skew on exp/nbf/iat, kid selection) and returns ``{role, 'request.jwt.claims'}`` from
``pgSettings(req)``; PostGraphile applies both with ``set_config(..., true)`` inside the
request's transaction, i.e. ``SET LOCAL ROLE`` plus PostgREST's claims GUC. ``SET ROLE`` does
not apply a role's own settings, so ``pgSettings`` also sets the role's ``statement_timeout``
(``role_timeouts_ms``, from the access plan) for the request, as PostgREST does.

The integration test starts PostGraphile with exactly what these functions return, so what is
tested is what the Deployment runs. Secrets appear only as ``secretKeyRef`` names, never values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

POSTGRAPHILE_VERSION: Final = "4.14.1"
# The pilot image's unprivileged "node" user (components/graphql/Dockerfile: USER 1000:1000).
NODE_UID: Final = 1000
RC_FILE: Final = ".postgraphilerc.js"
METRICS_PORT: Final = 9464
"""The plugin's /metrics port (the OpenTelemetry Prometheus exporter's customary one)."""
METRIC_NAMES: Final = (
    "pgplatform_graphql_requests_total",
    "pgplatform_graphql_request_duration_seconds",
    "pgplatform_graphql_errors_total",
)
"""What the rc file's plugin counts (prom-client; the histogram adds _bucket/_sum/_count)."""
PACKAGE_FILES: Final = ("package.json", "package-lock.json")
# The pinned npm tree the image is built from and the integration tests run.
PACKAGE_DIR: Final = Path(__file__).resolve().parents[1] / "graphql"
# Writable emptyDir of the server; the root filesystem is read-only.
SCRATCH_DIR: Final = "/tmp"  # noqa: S108 - an emptyDir private to the pod
# Never JWT_SECRET: the v4 CLI reads that variable and would switch on its own JWT handling
# (audience "postgraphile", no request.jwt.claims), bypassing the rendered pgSettings.
JWT_SECRET_ENV: Final = "PGPLATFORM_JWT_SECRET"  # noqa: S105 - a variable name
# node-postgres reads the password from PGPASSWORD when the connection string has none.
DB_PASSWORD_ENV: Final = "PGPASSWORD"  # noqa: S105 - a variable name
SSL_MODES: Final = ("disable", "require", "verify-full")
SslMode = Literal["disable", "require", "verify-full"]
# Schemas that must never be exposed through the API.
FORBIDDEN_SCHEMAS: Final = frozenset({"platform", "audit", "public", "information_schema"})

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_FUNCTION = re.compile(r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_DB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$")
_ABS_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_ROUTE = re.compile(r"^/[A-Za-z0-9_/-]*[A-Za-z0-9_-]$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_AUDIENCE = re.compile(r"^[\x21-\x7e]{1,255}$")
# One step of the supported JSPath subset: .key, ."quoted key" or [index].
_JSPATH_STEP = re.compile(r'\.([A-Za-z0-9_$@]+)|\."([^"]+)"|\[([0-9]+)\]')


@dataclass(frozen=True, kw_only=True)
class SecretKeyRef:
    """A key of a Kubernetes Secret: rendered as ``valueFrom.secretKeyRef``, never as a value."""

    name: str
    key: str

    def __post_init__(self) -> None:
        if not _SECRET_NAME.match(self.name):
            raise ValueError(f"name: {self.name!r} is not a Kubernetes Secret name")
        if not _SECRET_KEY.match(self.key):
            raise ValueError(f"key: {self.key!r} is not a Kubernetes Secret key")


@dataclass(frozen=True, kw_only=True)
class PostgraphileInput:
    """What the GraphQL pilot needs; the JWT fields mirror the PostgREST ones of the same API.

    Exactly one of ``jwt_secret`` (HS256, like PostgREST's ``jwt-secret``) and ``jwks_file``
    (a JWKS/JWK JSON file mounted into the pod) is set. ``jwt_audience=None`` accepts any
    ``aud``, as PostgREST does without ``jwt-aud``. ``default_role=None`` (prod) refuses requests
    without a JWT or without a role claim, with 401.
    """

    schemas: tuple[str, ...]
    db_host: str
    db_port: int = 5432
    db_name: str
    db_user: str = "postgraphile"
    db_password: SecretKeyRef
    db_sslmode: SslMode
    db_sslrootcert: str | None = None
    jwt_audience: str | None
    jwt_role_claim_key: str = ".role"
    jwt_secret: SecretKeyRef | None = None
    jwks_file: str | None = None
    default_role: str | None = None
    pre_request: str | None = "platform.pre_request"
    graphiql: bool = False
    query_log: bool = False
    listen_host: str = "0.0.0.0"  # noqa: S104 - a pod listens on its own IP
    port: int = 5000
    graphql_route: str = "/graphql"
    graphiql_route: str = "/graphiql"
    max_pool_size: int = 10
    config_dir: str = "/etc/postgraphile"
    app_dir: str = "/app"
    """Where the image holds the npm tree (the Dockerfile's WORKDIR)."""
    role_timeouts_ms: Mapping[str, int] = field(default_factory=dict)
    """API role -> its statement_timeout in ms, applied per request (SET ROLE does not)."""
    metrics_port: int | None = METRICS_PORT
    """Port of the Prometheus ``/metrics`` endpoint of the rc file's plugin; None: off."""
    max_operation_names: int = 100
    """Distinct GraphQL operation names the metrics keep apart; later ones count as other."""
    request_log: bool = True
    """One JSON line per operation on stdout (name, status, role, duration, traceparent)."""
    role_claim_path: tuple[str | int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "role_timeouts_ms", dict(sorted(self.role_timeouts_ms.items())))
        _check_schemas(self.schemas)
        _check_database(self)
        _check_jwt(self)
        _check_timeouts(self.role_timeouts_ms)
        object.__setattr__(self, "role_claim_path", parse_role_claim_key(self.jwt_role_claim_key))
        _check_server(self)
        _check_telemetry(self)


def _check_schemas(schemas: tuple[str, ...]) -> None:
    if not schemas:
        raise ValueError("schemas: at least one schema is required")
    if len(set(schemas)) != len(schemas):
        raise ValueError(f"schemas: {list(schemas)} lists a schema twice")
    for schema in schemas:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schemas: {schema!r} is not a lowercase SQL identifier")
        if schema in FORBIDDEN_SCHEMAS or schema.startswith("pg_"):
            raise ValueError(f"schemas: {schema!r} must never be exposed through the API")


def _check_path(name: str, value: str | None) -> None:
    if value is not None and (not _ABS_PATH.match(value) or "/../" in f"{value}/"):
        raise ValueError(f"{name}: {value!r} is not an absolute path without '..'")


def _check_database(inp: PostgraphileInput) -> None:
    if not _HOST.match(inp.db_host):
        raise ValueError(f"db_host: {inp.db_host!r} is not a host name or IPv4 address")
    _check_port("db_port", inp.db_port)
    if not _DB_NAME.match(inp.db_name):
        raise ValueError(f"db_name: {inp.db_name!r} is not a plain database name")
    if not _IDENTIFIER.match(inp.db_user):
        raise ValueError(f"db_user: {inp.db_user!r} is not a lowercase SQL identifier")
    if inp.db_sslmode not in SSL_MODES:
        raise ValueError(f"db_sslmode: {inp.db_sslmode!r} is not one of {list(SSL_MODES)}")
    if inp.db_sslmode == "verify-full" and inp.db_sslrootcert is None:
        raise ValueError("db_sslrootcert: verify-full needs the CA file that signs the server")
    if inp.db_sslmode == "disable" and inp.db_sslrootcert is not None:
        raise ValueError("db_sslrootcert: a CA file makes no sense with db_sslmode disable")
    _check_path("db_sslrootcert", inp.db_sslrootcert)
    size = inp.max_pool_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 100:
        raise ValueError(f"max_pool_size: {size!r} is not within 1..100")


def _check_jwt(inp: PostgraphileInput) -> None:
    if inp.jwt_audience is not None and not _AUDIENCE.match(inp.jwt_audience):
        raise ValueError(f"jwt_audience: {inp.jwt_audience!r} must be printable, no spaces")
    if (inp.jwt_secret is None) == (inp.jwks_file is None):
        raise ValueError("jwt_secret/jwks_file: set exactly one of them")
    _check_path("jwks_file", inp.jwks_file)
    if inp.default_role is not None:
        if not _IDENTIFIER.match(inp.default_role):
            raise ValueError(f"default_role: {inp.default_role!r} is not a SQL identifier")
        if inp.default_role == inp.db_user:
            raise ValueError("default_role: must not be the authenticator itself")
    if inp.pre_request is not None and not _FUNCTION.match(inp.pre_request):
        raise ValueError(f"pre_request: {inp.pre_request!r} is not a schema.function name")


def _check_timeouts(timeouts: Mapping[str, int]) -> None:
    for role, timeout in timeouts.items():
        if not _IDENTIFIER.match(role):
            raise ValueError(f"role_timeouts_ms: {role!r} is not a lowercase SQL identifier")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
            raise ValueError(f"role_timeouts_ms.{role}: {timeout!r} is not a positive integer")


def _check_server(inp: PostgraphileInput) -> None:
    _check_port("port", inp.port)
    if not _HOST.match(inp.listen_host):
        raise ValueError(f"listen_host: {inp.listen_host!r} is not an address")
    for name in ("graphql_route", "graphiql_route"):
        route = getattr(inp, name)
        if not _ROUTE.match(route) or "//" in route:
            raise ValueError(f"{name}: {route!r} is not a path like /graphql")
    if inp.graphiql_route == inp.graphql_route:
        raise ValueError("graphiql_route: must differ from graphql_route")
    _check_path("config_dir", inp.config_dir)
    _check_path("app_dir", inp.app_dir)


def _check_telemetry(inp: PostgraphileInput) -> None:
    if inp.metrics_port is not None:
        _check_port("metrics_port", inp.metrics_port)
        if inp.metrics_port == inp.port:
            raise ValueError(f"metrics_port: must differ from port {inp.port}")
    if not 1 <= inp.max_operation_names <= 10_000:
        raise ValueError(f"max_operation_names: 1..10000, got {inp.max_operation_names}")


def _check_port(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{name}: {value!r} is not a TCP port (1..65535)")


def parse_role_claim_key(key: str) -> tuple[str | int, ...]:
    """Parse PostgREST's ``jwt-role-claim-key`` JSPath into steps (keys and array indexes).

    Supported subset: ``.key`` (letters, digits, ``_$@``), ``."any key"`` and ``[n]``, e.g.
    ``.role``, ``.realm_access.roles[0]``, ``."https://example.com/role"``. PostgREST's filter
    (``[?(@ == "x")]``) and slice (``[1:]``) operators are refused rather than half-supported.
    """
    steps: list[str | int] = []
    position = 0
    while position < len(key):
        match = _JSPATH_STEP.match(key, position)
        if match is None:
            raise ValueError(
                f"jwt_role_claim_key: {key!r} is not in the supported JSPath subset "
                '(.key, ."quoted key", [index]); filters and slices are not supported'
            )
        plain, quoted, index = match.groups()
        steps.append(int(index) if index is not None else (plain or quoted))
        position = match.end()
    if not steps or not isinstance(steps[0], str):
        raise ValueError(f"jwt_role_claim_key: {key!r} must start with a .key step")
    return tuple(steps)


def connection_string(inp: PostgraphileInput) -> str:
    """``postgres://`` URL without password (node-postgres takes it from ``PGPASSWORD``)."""
    url = f"postgres://{inp.db_user}@{inp.db_host}:{inp.db_port}/{inp.db_name}"
    params = ["application_name=postgraphile"]
    if inp.db_sslmode == "require":
        # libpq semantics (encrypt, no verification); plain node-postgres treats it as verify-full.
        params += ["sslmode=require", "uselibpqcompat=true"]
    else:
        params.append(f"sslmode={inp.db_sslmode}")
    if inp.db_sslrootcert is not None:
        params.append(f"sslrootcert={inp.db_sslrootcert}")
    return f"{url}?{'&'.join(params)}"


def container_command(inp: PostgraphileInput) -> list[str]:
    """Run the CLI of the pinned PostGraphile the image holds under ``app_dir``."""
    return ["node", f"{inp.app_dir}/node_modules/postgraphile/cli.js"]


def container_args(inp: PostgraphileInput) -> list[str]:
    """CLI flags; no secret ever appears here (the URL has no password)."""
    args = [
        "--connection",
        connection_string(inp),
        "--schema",
        ",".join(inp.schemas),
        "--host",
        inp.listen_host,
        "--port",
        str(inp.port),
        "--graphql",
        inp.graphql_route,
        "--max-pool-size",
        str(inp.max_pool_size),
        # Only expose what some role the authenticator may become can use.
        "--no-ignore-rbac",
        "--dynamic-json",
        "--no-setof-functions-contain-nulls",
        # Keep serving (and retrying) while the database or PgBouncer is not up yet.
        "--retry-on-init-fail",
    ]
    if inp.graphiql:
        args += ["--graphiql", inp.graphiql_route]
    else:
        args.append("--disable-graphiql")
    if not inp.query_log:
        args.append("--disable-query-log")
    return args


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def container_env(inp: PostgraphileInput) -> list[dict[str, Any]]:
    """Environment of the PostGraphile container, as Kubernetes ``EnvVar`` dicts."""
    env: list[dict[str, Any]] = [
        _secret_env(DB_PASSWORD_ENV, inp.db_password),
        # PgBouncer's transaction pooling cannot keep named prepared statements across
        # transactions: make graphile-build-pg send unnamed ones.
        {"name": "POSTGRAPHILE_PREPARED_STATEMENT_CACHE_SIZE", "value": "0"},
        {"name": "NODE_ENV", "value": "production"},
    ]
    if inp.jwt_secret is not None:
        env.append(_secret_env(JWT_SECRET_ENV, inp.jwt_secret))
    return env


def rc_config(inp: PostgraphileInput) -> dict[str, Any]:
    """The settings baked into ``.postgraphilerc.js`` (no secret: only the env var's name)."""
    return {
        "appDir": inp.app_dir,
        "audience": inp.jwt_audience,
        "roleClaimPath": list(inp.role_claim_path),
        "defaultRole": inp.default_role,
        "preRequest": inp.pre_request,
        "jwksFile": inp.jwks_file,
        "jwtSecretEnv": JWT_SECRET_ENV if inp.jwt_secret is not None else None,
        "roleTimeoutsMs": dict(inp.role_timeouts_ms),
        "metricsPort": inp.metrics_port,
        "metricsHost": inp.listen_host,
        "maxOperationNames": inp.max_operation_names,
        "requestLog": inp.request_log,
    }


def render_rc_file(inp: PostgraphileInput) -> str:
    """The ``.postgraphilerc.js`` text: PostgREST-compatible JWT checks and ``pgSettings``."""
    config = json.dumps(rc_config(inp), indent=2, sort_keys=True, ensure_ascii=True)
    config = config.replace("\n", "\n  ").replace("\n  }", "\n}")
    return _RC_TEMPLATE.replace("__PGPLATFORM_CONFIG__", config)


def config_files(inp: PostgraphileInput) -> dict[str, str]:
    """ConfigMap data mounted at ``config_dir`` (the container's working directory)."""
    return {RC_FILE: render_rc_file(inp)}


def read_package_files(directory: Path = PACKAGE_DIR) -> dict[str, str]:
    """``package.json`` + ``package-lock.json`` of the image, checked to pin PostGraphile.

    The same two files drive the integration tests, so the tree the pod installs is the tested
    one. A lockfile that does not pin :data:`POSTGRAPHILE_VERSION` exactly is refused.
    """
    files = {name: (directory / name).read_text(encoding="utf-8") for name in PACKAGE_FILES}
    manifest = json.loads(files["package.json"])
    lock = json.loads(files["package-lock.json"])
    pinned = manifest.get("dependencies", {}).get("postgraphile")
    if pinned != POSTGRAPHILE_VERSION:
        raise ValueError(
            f"package.json: postgraphile is {pinned!r}, expected exactly {POSTGRAPHILE_VERSION!r}"
        )
    locked: Mapping[str, Any] = lock.get("packages", {}).get("node_modules/postgraphile", {})
    if locked.get("version") != POSTGRAPHILE_VERSION or "integrity" not in locked:
        raise ValueError(
            f"package-lock.json: postgraphile is not locked at {POSTGRAPHILE_VERSION} "
            "with an integrity hash: run npm install in that directory"
        )
    return files


_RC_TEMPLATE: Final = r"""'use strict';
// PostGraphile v4 options file (.postgraphilerc.js), rendered by pgplatform's
// components/render/postgraphile.py: do not edit the deployed copy by hand.
//
// The PostGraphile CLI loads this file from its working directory. pgSettings(req) verifies the
// bearer JWT with PostgREST's rules and returns the role and the claims; PostGraphile applies
// them inside the request's transaction as set_config('role', <role>, true) (= SET LOCAL ROLE)
// and set_config('request.jwt.claims', <claims json>, true), so the row level security policies
// of the exposed schemas see exactly what they see under PostgREST.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const { createRequire } = require('module');

const CONFIG = __PGPLATFORM_CONFIG__;

// jsonwebtoken from the tree `npm ci` installed from the pinned package-lock.json.
const jwt = createRequire(`${CONFIG.appDir}/package.json`)('jsonwebtoken');

// PostgREST tolerates 30 seconds of clock skew on exp, nbf and iat.
const CLOCK_SKEW_SECONDS = 30;
// PostgREST refuses shorter HS256 secrets.
const MIN_SECRET_LENGTH = 32;
// A JWKS file mounted from a Secret is swapped atomically on rotation: look at it this often.
const KEY_RECHECK_MS = 10000;

class AuthError extends Error {
  constructor(message) {
    super(message);
    this.name = 'AuthError';
    // PostGraphile's HTTP handler answers with error.status / error.statusCode.
    this.status = 401;
    this.statusCode = 401;
  }
}

const ALGORITHMS_BY_KTY = {
  RSA: ['RS256', 'RS384', 'RS512'],
  oct: ['HS256', 'HS384', 'HS512'],
};
const ALGORITHM_BY_CURVE = { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' };

function keyFromJwk(jwk, index) {
  if (jwk === null || typeof jwk !== 'object' || Array.isArray(jwk)) {
    throw new Error(`JWKS key #${index} is not a JSON object`);
  }
  let algorithms =
    jwk.kty === 'EC'
      ? ALGORITHM_BY_CURVE[jwk.crv] && [ALGORITHM_BY_CURVE[jwk.crv]]
      : ALGORITHMS_BY_KTY[jwk.kty];
  if (!algorithms) {
    throw new Error(`JWKS key #${index}: unsupported kty/crv ${jwk.kty}/${jwk.crv}`);
  }
  if (jwk.alg !== undefined) {
    if (!algorithms.includes(jwk.alg)) {
      throw new Error(`JWKS key #${index}: alg ${jwk.alg} does not fit kty ${jwk.kty}`);
    }
    algorithms = [jwk.alg];
  }
  const key =
    jwk.kty === 'oct'
      ? crypto.createSecretKey(Buffer.from(String(jwk.k || ''), 'base64url'))
      : crypto.createPublicKey({ key: jwk, format: 'jwk' });
  return { kid: typeof jwk.kid === 'string' ? jwk.kid : undefined, key, algorithms };
}

function keysOf(document, source) {
  const jwks = Array.isArray(document && document.keys) ? document.keys : [document];
  // Keys published for encryption only are never used to verify a signature.
  const keys = jwks
    .map((jwk, index) => [jwk, index])
    .filter(([jwk]) => !(jwk && jwk.use !== undefined && jwk.use !== 'sig'))
    .map(([jwk, index]) => keyFromJwk(jwk, index));
  if (keys.length === 0) {
    throw new Error(`${source} holds no signature verification key`);
  }
  return keys;
}

function loadJwks(path) {
  return keysOf(JSON.parse(fs.readFileSync(path, 'utf8')), path);
}

// Like PostgREST's jwt-secret: a JWK Set (or one JWK) is used as keys, e.g. two "oct" keys
// with kids while a shared secret is rotated; anything else is the HS256 secret itself.
function loadSecret(name) {
  const secret = process.env[name];
  if (secret === undefined || secret === '') {
    throw new Error(`environment variable ${name} (the JWT secret) is not set`);
  }
  let document;
  try {
    document = JSON.parse(secret);
  } catch (error) {
    document = undefined;
  }
  if (document !== null && typeof document === 'object' && !Array.isArray(document)) {
    if (Array.isArray(document.keys) || typeof document.kty === 'string') {
      return keysOf(document, `environment variable ${name}`);
    }
  }
  if (secret.length < MIN_SECRET_LENGTH) {
    throw new Error(`the JWT secret in ${name} must be at least ${MIN_SECRET_LENGTH} characters`);
  }
  const key = crypto.createSecretKey(Buffer.from(secret, 'utf8'));
  return [{ kid: undefined, key, algorithms: ['HS256'] }];
}

function mtimeOf(path) {
  return fs.statSync(path).mtimeMs;
}

// Fail at start-up, not on the first request, when the key material is missing or unusable.
let keyState = CONFIG.jwksFile
  ? { keys: loadJwks(CONFIG.jwksFile), mtimeMs: mtimeOf(CONFIG.jwksFile), checkedAt: Date.now() }
  : { keys: loadSecret(CONFIG.jwtSecretEnv), mtimeMs: 0, checkedAt: Date.now() };

function currentKeys() {
  const now = Date.now();
  if (!CONFIG.jwksFile || now - keyState.checkedAt < KEY_RECHECK_MS) {
    return keyState.keys;
  }
  keyState.checkedAt = now;
  try {
    const mtimeMs = mtimeOf(CONFIG.jwksFile);
    if (mtimeMs !== keyState.mtimeMs) {
      keyState = { keys: loadJwks(CONFIG.jwksFile), mtimeMs, checkedAt: now };
      console.log(`pgplatform: reloaded JWKS from ${CONFIG.jwksFile}`);
    }
  } catch (error) {
    console.error(
      `pgplatform: keeping the previous keys, reading ${CONFIG.jwksFile} failed: ${error.message}`,
    );
  }
  return keyState.keys;
}

// Like PostgREST: only the Bearer scheme (any case) carries a JWT; other schemes are ignored.
function bearerToken(req) {
  const header = req.headers.authorization;
  if (typeof header !== 'string') {
    return null;
  }
  const match = /^bearer(?:[ \t]+(.*))?$/i.exec(header.trim());
  if (match === null) {
    return null;
  }
  const token = (match[1] || '').trim();
  if (token === '') {
    throw new AuthError('Empty JWT in the Authorization header');
  }
  return token;
}

function verifySignature(token) {
  const parts = token.split('.').length;
  if (parts !== 3) {
    throw new AuthError(`Expected 3 parts in JWT; got ${parts}`);
  }
  const decoded = jwt.decode(token, { complete: true });
  if (decoded === null || typeof decoded.header !== 'object') {
    throw new AuthError('The JWT is malformed');
  }
  const kid = decoded.header.kid;
  // A token naming a kid is only checked against the key with that kid; one without a kid is
  // tried against every key (PostgREST's kid verification).
  const candidates = currentKeys().filter((k) => kid === undefined || k.kid === kid);
  if (candidates.length === 0) {
    throw new AuthError('No key matches the kid of the JWT');
  }
  for (const candidate of candidates) {
    let payload;
    try {
      payload = jwt.verify(token, candidate.key, {
        algorithms: candidate.algorithms,
        // exp and nbf are checked below with PostgREST's rules and skew.
        ignoreExpiration: true,
        ignoreNotBefore: true,
      });
    } catch (error) {
      continue;
    }
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      throw new AuthError('The JWT claims are not a JSON object');
    }
    return payload;
  }
  throw new AuthError('JWSError JWSInvalidSignature');
}

function timeClaim(claims, name) {
  const value = claims[name];
  if (value === undefined || value === null) {
    return undefined;
  }
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new AuthError(`The JWT '${name}' claim must be a number`);
  }
  return Math.floor(value);
}

function validateClaims(claims) {
  const now = Math.floor(Date.now() / 1000);
  const exp = timeClaim(claims, 'exp');
  if (exp !== undefined && now - CLOCK_SKEW_SECONDS > exp) {
    throw new AuthError('JWT expired');
  }
  const nbf = timeClaim(claims, 'nbf');
  if (nbf !== undefined && now + CLOCK_SKEW_SECONDS < nbf) {
    throw new AuthError('JWT not yet valid');
  }
  const iat = timeClaim(claims, 'iat');
  if (iat !== undefined && now + CLOCK_SKEW_SECONDS < iat) {
    throw new AuthError('JWT issued at future');
  }
  const aud = claims.aud;
  if (aud === undefined || aud === null) {
    return;
  }
  let audiences;
  if (typeof aud === 'string') {
    audiences = [aud];
  } else if (Array.isArray(aud) && aud.every((a) => typeof a === 'string')) {
    audiences = aud;
  } else {
    throw new AuthError("The JWT 'aud' claim must be a string or an array of strings");
  }
  // A token with an empty audience list is meant for every audience, as in PostgREST.
  if (CONFIG.audience !== null && audiences.length > 0 && !audiences.includes(CONFIG.audience)) {
    throw new AuthError('JWT not in audience');
  }
}

function walk(value, path) {
  let current = value;
  for (const step of path) {
    if (typeof step === 'number') {
      if (!Array.isArray(current) || step >= current.length) {
        return undefined;
      }
      current = current[step];
    } else {
      if (current === null || typeof current !== 'object' || Array.isArray(current)) {
        return undefined;
      }
      if (!Object.prototype.hasOwnProperty.call(current, step)) {
        return undefined;
      }
      current = current[step];
    }
  }
  return current;
}

async function pgSettings(req) {
  const token = bearerToken(req);
  let claims = {};
  if (token !== null) {
    claims = verifySignature(token);
    validateClaims(claims);
  }
  const found = walk(claims, CONFIG.roleClaimPath);
  let role;
  if (found === undefined) {
    if (CONFIG.defaultRole === null) {
      throw new AuthError(
        token === null
          ? 'Anonymous access is disabled: send a JWT as Authorization: Bearer <token>'
          : 'The JWT has no role claim and anonymous access is disabled',
      );
    }
    role = CONFIG.defaultRole;
  } else {
    // PostgREST uses a non-string role value in its JSON form.
    role = typeof found === 'string' ? found : JSON.stringify(found);
  }
  if (role === '') {
    throw new AuthError('The role claim of the JWT is empty');
  }
  // PostgREST hands the database the verified claims with "role" set to the role it switched to.
  const settings = { role, 'request.jwt.claims': JSON.stringify({ ...claims, role }) };
  // The gateway's trace context reaches the database session: SQL reads it as
  // current_setting('request.traceparent', true), and every line PostgreSQL logs for this
  // transaction carries it in application_name.
  const traceparent = traceparentOf(req);
  if (traceparent !== null) {
    settings['request.traceparent'] = traceparent;
    settings.application_name = `${APPLICATION_NAME}:${traceparent}`;
  }
  // SET ROLE does not apply the role's own settings: its statement_timeout holds for this
  // request's transaction only, as under PostgREST. A role not listed is one the authenticator
  // cannot become, which the database refuses.
  if (Object.prototype.hasOwnProperty.call(CONFIG.roleTimeoutsMs, role)) {
    settings.statement_timeout = String(CONFIG.roleTimeoutsMs[role]);
  }
  return settings;
}

// HTTP status codes as PostgREST maps these SQLSTATEs: insufficient_privilege (a role the
// authenticator may not become, or a pre-request refusal) -> 403, a PL/pgSQL RAISE -> 400.
function withPostgrestStatus(error) {
  if (error && error.code === '42501') {
    error.statusCode = 403;
  } else if (error && typeof error.code === 'string' && error.code.startsWith('P0')) {
    error.statusCode = 400;
  }
  return error;
}

// PostgREST runs its db-pre-request function after the role and claims are set and before the
// query, in the same transaction. This PostGraphile server plugin hook does the same on the
// request's transaction client; the CLI loads it from options.plugins (this very file).
function withPostGraphileContext(previous) {
  return async (options, callback) => {
    try {
      return await previous(options, async (context) => {
        if (CONFIG.preRequest !== null) {
          await context.pgClient.query(`select ${CONFIG.preRequest}()`);
        }
        return callback(context);
      });
    } catch (error) {
      throw withPostgrestStatus(error);
    }
  };
}

// -- Telemetry: W3C trace context, Prometheus metrics, a JSON line per request ------------------

// traceparent (W3C Trace Context, version 00): version-traceid-parentid-flags, lower-case hex;
// all-zero ids and version ff are invalid and dropped, as a tracer would.
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
// PostgreSQL keeps 63 bytes of application_name: the prefix plus the 55 of a traceparent fit.
const APPLICATION_NAME = 'graphql';

function traceparentOf(req) {
  const value = req && req.headers ? req.headers.traceparent : undefined;
  if (typeof value !== 'string') {
    return null;
  }
  const match = TRACEPARENT.exec(value.trim());
  if (match === null || match[1] === 'ff' || /^0+$/.test(match[2]) || /^0+$/.test(match[3])) {
    return null;
  }
  return match[0];
}

const promClient = createRequire(`${CONFIG.appDir}/package.json`)('prom-client');
const registry = new promClient.Registry();
promClient.collectDefaultMetrics({ register: registry });
const OPERATION_LABELS = ['operation', 'operation_type'];
const requestsTotal = new promClient.Counter({
  name: 'pgplatform_graphql_requests_total',
  help: 'GraphQL operations answered, by operation name, type and HTTP status.',
  labelNames: [...OPERATION_LABELS, 'status'],
  registers: [registry],
});
const requestSeconds = new promClient.Histogram({
  name: 'pgplatform_graphql_request_duration_seconds',
  help: 'Time from receiving a GraphQL request to its response, by operation name and type.',
  labelNames: OPERATION_LABELS,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});
const errorsTotal = new promClient.Counter({
  name: 'pgplatform_graphql_errors_total',
  help: 'GraphQL errors returned (a response may carry several), by operation name and type.',
  labelNames: OPERATION_LABELS,
  registers: [registry],
});

// Operation names are chosen by clients: past this many distinct ones, new names count as
// "other" in the metrics, so a client cannot grow them without bound (the log keeps the name).
const seenOperations = new Set();
const ANONYMOUS = 'anonymous';
const INVALID = 'invalid';
const OTHER = 'other';

function operationOf(documentAst) {
  const definitions = (documentAst && documentAst.definitions) || [];
  const operation = definitions.find((d) => d.kind === 'OperationDefinition');
  if (!operation) {
    return { name: INVALID, label: INVALID, type: INVALID };
  }
  const name = operation.name ? operation.name.value : ANONYMOUS;
  let label = name;
  if (!seenOperations.has(name)) {
    if (seenOperations.size >= CONFIG.maxOperationNames) {
      label = OTHER;
    } else {
      seenOperations.add(name);
    }
  }
  return { name, label, type: operation.operation };
}

function requestIdOf(req) {
  const value = req.headers['x-request-id'];
  return typeof value === 'string' ? value : null;
}

const STARTED = Symbol('pgplatform.started');
const OPERATIONS = Symbol('pgplatform.operations');

// Every request through PostGraphile's handler: note when it arrived.
function httpHandler(req) {
  if (req) {
    req[STARTED] = process.hrtime.bigint();
    req[OPERATIONS] = [];
  }
  return req;
}

// One per operation of the request (several when batched): its name, type, errors and role.
function httpResult(result, { queryDocumentAst, req, pgRole }) {
  if (req && req[OPERATIONS]) {
    req[OPERATIONS].push({
      ...operationOf(queryDocumentAst),
      errors: (result && result.errors ? result.errors.length : 0),
      role: pgRole === undefined ? null : pgRole,
    });
  }
  return result;
}

// The response is complete: count, time and log each operation with the final HTTP status.
function httpEnd(end, { req }) {
  if (!req || req[STARTED] === undefined) {
    return end;
  }
  const seconds = Number(process.hrtime.bigint() - req[STARTED]) / 1e9;
  const status = String(end.statusCode || 200);
  const operations = req[OPERATIONS].length
    ? req[OPERATIONS]
    : [{ name: INVALID, label: INVALID, type: INVALID, errors: 1, role: null }];
  for (const op of operations) {
    const labels = { operation: op.label, operation_type: op.type };
    requestsTotal.inc({ ...labels, status });
    requestSeconds.observe(labels, seconds);
    if (op.errors > 0) {
      errorsTotal.inc(labels, op.errors);
    }
    if (CONFIG.requestLog) {
      process.stdout.write(
        `${JSON.stringify({
          time: new Date().toISOString(),
          msg: 'graphql request',
          operation: op.name,
          operation_type: op.type,
          status: Number(status),
          errors: op.errors,
          role: op.role,
          duration_ms: Math.round(seconds * 1e6) / 1e3,
          traceparent: traceparentOf(req),
          request_id: requestIdOf(req),
        })}\n`,
      );
    }
  }
  return end;
}

// Prometheus scrapes a port of its own, which the gateway never routes to.
function serverCreated(server) {
  if (CONFIG.metricsPort !== null) {
    const metrics = http.createServer(async (req, res) => {
      if (req.method !== 'GET' || (req.url || '').split('?')[0] !== '/metrics') {
        res.statusCode = 404;
        res.end();
        return;
      }
      try {
        const body = await registry.metrics();
        res.setHeader('Content-Type', registry.contentType);
        res.end(body);
      } catch (error) {
        res.statusCode = 500;
        res.end(String(error));
      }
    });
    metrics.listen(CONFIG.metricsPort, CONFIG.metricsHost);
    server.on('close', () => metrics.close());
  }
  return server;
}

module.exports = {
  options: { pgSettings, plugins: [__filename] },
  withPostGraphileContext,
  'postgraphile:http:handler': httpHandler,
  'postgraphile:http:result': httpResult,
  'postgraphile:http:end': httpEnd,
  'cli:server:created': serverCreated,
};
"""
