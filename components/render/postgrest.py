"""Pure builders for PostgREST: ``postgrest.conf`` and the JWT key reloader.

Targets PostgREST v14 (option names, the JSPath DSL of ``jwt-role-claim-key`` and
``jwt-cache-max-entries`` are those of the v14 line; v16 changed the JSPath syntax).

Decisions that are encoded here and why:

* PostgREST talks to PgBouncer in transaction pooling mode, so prepared statements and the
  ``LISTEN`` channel are off (PostgREST docs, "Using External Connection Poolers").
* The database password is never in the file: ``db-uri`` has no password and libpq takes it
  from ``PGPASSWORD`` (a Secret-backed env var), as it does for every parameter the URI omits.
* The file is the only configuration source: in-database configuration (``db-config``) is off so
  a role setting in the database can never change e.g. ``jwt-secret`` behind the reviewer's back.
* The JWT key comes from a file (``jwt-secret = "@/path"``) that a Secret volume keeps current;
  PostgREST re-reads that file on ``SIGUSR2``, which :func:`jwt_key_reload_script` sends.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

from components.render.baseline import SCHEMA_SETTING

POSTGREST_VERSION = "v14.18"
"""Newest v14 patch release (2026-09-10) per the upstream CHANGELOG."""

POSTGREST_IMAGE = f"docker.io/postgrest/postgrest:{POSTGREST_VERSION}"

JWT_KEY_DIR = "/etc/postgrest/jwt"
"""Mount directory of the JWT key Secret volume (a directory mount, never ``subPath``)."""

JWKS_FILE = f"{JWT_KEY_DIR}/jwks.json"
"""Prod: the identity provider's JSON Web Key Set, synced by an ExternalSecret."""

HS256_SECRET_FILE = f"{JWT_KEY_DIR}/jwt-secret"
"""Staging: the shared HS256 secret (or an ``oct`` JWK Set) from Vault."""

PGPASSWORD_ENV = "PGPASSWORD"
"""libpq reads the authenticator password from this env var (db-uri carries none)."""

DEFAULT_ROLE_CLAIM_KEY = ".role"

JWT_RELOADER_IMAGE = "docker.io/library/busybox:1.37.0"
"""Sidecar image for :func:`jwt_key_reload_script` (needs sh, sha256sum, pkill, sleep)."""

LogLevel = Literal["crit", "error", "warn", "info", "debug"]
OpenApiMode = Literal["follow-privileges", "ignore-privileges", "disabled"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

_LOG_LEVELS = ("crit", "error", "warn", "info", "debug")
_OPENAPI_MODES = ("follow-privileges", "ignore-privileges", "disabled")
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)
_ABS_PATH = re.compile(r"/[A-Za-z0-9._/-]+")
_HTTP_TOKEN = re.compile(r"[A-Za-z0-9-]{1,64}")
_DB_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_QUALIFIED_FUNCTION = re.compile(r"[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}")
_NEVER_EXPOSED_SCHEMAS = frozenset({"public", "information_schema", "audit", "platform"})

# PostgREST v14 ``jwt-role-claim-key`` DSL (src/PostgREST/Config/JSPath.hs): one or more
# ``.key`` / ``."quoted key"`` / ``[index]`` steps, optionally ending in one string filter.
_JSPATH_KEY = re.compile(r'\.(?:[A-Za-z0-9_$@]+|"[^"]*")')
_JSPATH_INDEX = re.compile(r"\[[0-9]+\]")
_JSPATH_FILTER = re.compile(r'\[\?\(@\s*(?:==\^|==|!=|\^==|\*==)\s*"[^"]*"\)\]')


def _fail(field: str, problem: str) -> ValueError:
    return ValueError(f"PostgrestConfInput.{field}: {problem}")


def validate_audience(value: object) -> str:
    """The ``aud`` PostgREST checks: a token without blanks, quotes, '\\' or '$', or a URI."""
    if not isinstance(value, str) or not value or re.search(r'[\s"\\$]', value):
        raise ValueError("must be a non-empty token without spaces, quotes, '\\' or '$', or a URI")
    if ":" in value and not _URI_SCHEME.match(value):
        raise ValueError("has ':' so must be a URI (RFC 7519), e.g. 'urn:example:api'")
    return value


def validate_role_claim_key(value: str) -> str:
    """Check ``value`` against the PostgREST v14 JSPath DSL and return it.

    PostgREST refuses to start on a malformed key; catching it here turns a crash-looping pod
    into a failed preview that names the setting.
    """
    if not value.startswith("."):
        raise ValueError(
            f"role claim key {value!r} must start with '.' (PostgREST v14 JSPath, e.g. '.role'); "
            "'$'-rooted JSON Path is the v16 syntax"
        )
    pos = 0
    while pos < len(value):
        for pattern in (_JSPATH_KEY, _JSPATH_INDEX):
            match = pattern.match(value, pos)
            if match:
                pos = match.end()
                break
        else:
            match = _JSPATH_FILTER.match(value, pos)
            if match and match.end() == len(value):
                return value
            hint = (
                "a filter must be the last step" if match else 'expected .key, [n] or [?(@ op "s")]'
            )
            raise ValueError(f"role claim key {value!r} is invalid at offset {pos}: {hint}")
    return value


def _check_port(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _fail(field, f"must be a TCP port 1..65535, got {value!r}")


def _check_positive(field: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(field, f"must be an integer >= {minimum}, got {value!r}")


def _check_ident(field: str, value: str) -> None:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise _fail(field, f"must be a lower-case SQL identifier [a-z_][a-z0-9_]*, got {value!r}")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check_http_url(field: str, value: str, *, origin_only: bool) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or any(c in value for c in ' "\\$')
    ):
        raise _fail(field, f"must be an http(s) URL without credentials or query, got {value!r}")
    if origin_only and parts.path not in ("", "/"):
        raise _fail(
            field, f"must be an origin (scheme://host[:port]) without a path, got {value!r}"
        )


@dataclass(frozen=True, kw_only=True)
class PostgrestConfInput:
    """Everything ``postgrest.conf`` needs for one domain API (one exposed schema)."""

    domain: str
    """Domain name, e.g. ``identity``; shown in the file header."""
    schema: str
    """The single schema this PostgREST exposes (``db-schemas``)."""
    db_host: str
    """PgBouncer Service host of the pool to use (rw, or ro for read-only domains)."""
    db_port: int = 5432
    db_name: str
    db_user: str = "postgrest"
    """The authenticator role (LOGIN NOINHERIT); its password comes from ``PGPASSWORD``."""
    db_sslmode: SslMode | None = None
    db_sslrootcert: str | None = None
    """CA file for ``verify-ca``/``verify-full`` towards PgBouncer."""
    anon_role: str | None = None
    """``db-anon-role``; ``None`` (prod) means requests without a valid JWT are rejected."""
    jwt_secret_file: str
    """Absolute path of the key file: an HS256 secret or a JWK Set (``jwt-secret = "@..."``)."""
    jwt_audience: str | None = None
    role_claim_key: str = DEFAULT_ROLE_CLAIM_KEY
    jwt_cache_max_entries: int = 1000
    """Bounded JWT verification cache (SIEVE); 0 disables it."""
    db_pool: int = 10
    db_pool_acquisition_timeout: int = 10
    db_max_rows: int | None = 1000
    pre_request: str | None = "platform.pre_request"
    extra_search_path: tuple[str, ...] = ()
    """Schemas added to every request's search_path (no endpoints); empty keeps out ``public``."""
    server_port: int = 3000
    admin_server_port: int = 3001
    """Serves ``/live``, ``/ready`` and ``/metrics``; never exposed through the gateway."""
    public_url: str | None = None
    """External base URL, used for the OpenAPI document and as the default CORS origin."""
    cors_allowed_origins: tuple[str, ...] = ()
    openapi_mode: OpenApiMode = "follow-privileges"
    log_level: LogLevel = "error"
    server_timing_enabled: bool = False
    trace_header: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not _DNS_LABEL.fullmatch(self.domain):
            raise _fail("domain", f"must be a DNS label [a-z][-a-z0-9]*, got {self.domain!r}")
        _check_ident("schema", self.schema)
        if self.schema in _NEVER_EXPOSED_SCHEMAS or self.schema.startswith("pg_"):
            raise _fail("schema", f"{self.schema!r} must never be exposed through the API")
        _validate_database(self)
        _validate_jwt(self)
        _validate_http(self)


def _validate_database(inp: PostgrestConfInput) -> None:
    if not isinstance(inp.db_host, str) or not (
        _HOSTNAME.fullmatch(inp.db_host) or _is_ip(inp.db_host)
    ):
        raise _fail("db_host", f"must be a DNS name or IP address, got {inp.db_host!r}")
    _check_port("db_port", inp.db_port)
    if not isinstance(inp.db_name, str) or not _DB_NAME.fullmatch(inp.db_name):
        raise _fail("db_name", f"must match [A-Za-z0-9_-]{{1,63}}, got {inp.db_name!r}")
    _check_ident("db_user", inp.db_user)
    if inp.db_sslmode is not None and inp.db_sslmode not in _SSL_MODES:
        raise _fail("db_sslmode", f"must be one of {_SSL_MODES}, got {inp.db_sslmode!r}")
    if inp.db_sslrootcert is not None:
        _check_abs_path("db_sslrootcert", inp.db_sslrootcert)
        if inp.db_sslmode not in ("verify-ca", "verify-full"):
            raise _fail("db_sslrootcert", "is only used with db_sslmode verify-ca/verify-full")
    if inp.anon_role is not None:
        _check_ident("anon_role", inp.anon_role)
        if not inp.anon_role.startswith("api_"):
            raise _fail("anon_role", f"must be an API role (api_*), got {inp.anon_role!r}")
    _check_positive("db_pool", inp.db_pool)
    _check_positive("db_pool_acquisition_timeout", inp.db_pool_acquisition_timeout)
    if inp.db_max_rows is not None:
        _check_positive("db_max_rows", inp.db_max_rows)
    if inp.pre_request is not None and not _QUALIFIED_FUNCTION.fullmatch(inp.pre_request):
        raise _fail("pre_request", f"must be schema.function, got {inp.pre_request!r}")
    if not isinstance(inp.extra_search_path, tuple):
        raise _fail("extra_search_path", "must be a tuple of schema names")
    for name in inp.extra_search_path:
        _check_ident("extra_search_path", name)
        if name == inp.schema:
            raise _fail("extra_search_path", f"{name!r} is already the exposed schema")


def _validate_jwt(inp: PostgrestConfInput) -> None:
    _check_abs_path("jwt_secret_file", inp.jwt_secret_file)
    if inp.jwt_audience is not None:
        try:
            validate_audience(inp.jwt_audience)
        except ValueError as exc:
            raise _fail("jwt_audience", f"{exc}, got {inp.jwt_audience!r}") from None
    try:
        validate_role_claim_key(inp.role_claim_key)
    except ValueError as exc:
        raise _fail("role_claim_key", str(exc)) from None
    _check_positive("jwt_cache_max_entries", inp.jwt_cache_max_entries, minimum=0)


def _validate_http(inp: PostgrestConfInput) -> None:
    _check_port("server_port", inp.server_port)
    _check_port("admin_server_port", inp.admin_server_port)
    if inp.server_port == inp.admin_server_port:
        raise _fail("admin_server_port", "must differ from server_port (PostgREST refuses)")
    if inp.public_url is not None:
        _check_http_url("public_url", inp.public_url, origin_only=False)
    if not isinstance(inp.cors_allowed_origins, tuple):
        raise _fail("cors_allowed_origins", "must be a tuple of origins")
    for origin in inp.cors_allowed_origins:
        _check_http_url("cors_allowed_origins", origin, origin_only=True)
    if inp.openapi_mode not in _OPENAPI_MODES:
        raise _fail("openapi_mode", f"must be one of {_OPENAPI_MODES}, got {inp.openapi_mode!r}")
    if inp.log_level not in _LOG_LEVELS:
        raise _fail("log_level", f"must be one of {_LOG_LEVELS}, got {inp.log_level!r}")
    if not isinstance(inp.server_timing_enabled, bool):
        raise _fail("server_timing_enabled", "must be a bool")
    if inp.trace_header is not None and not _HTTP_TOKEN.fullmatch(inp.trace_header):
        raise _fail("trace_header", f"must be an HTTP header name, got {inp.trace_header!r}")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_abs_path(field: str, value: str) -> None:
    if (
        not isinstance(value, str)
        or not _ABS_PATH.fullmatch(value)
        or "/../" in f"{value}/"
        or "/./" in f"{value}/"
        or value.endswith("/")
    ):
        raise _fail(field, f"must be an absolute file path [A-Za-z0-9._/-], got {value!r}")


def _conf_string(value: str) -> str:
    """Quote ``value`` for PostgREST's config syntax: backslash escapes, ``$`` doubled."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"config value {value!r} contains a control character")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{escaped}"'


def _conf_bool(value: bool) -> str:
    return "true" if value else "false"


def db_uri(inp: PostgrestConfInput) -> str:
    """Return the libpq URI without a password (libpq fills it from ``PGPASSWORD``)."""
    host = f"[{inp.db_host}]" if ":" in inp.db_host else inp.db_host
    uri = f"postgresql://{quote(inp.db_user, safe='')}@{host}:{inp.db_port}/{quote(inp.db_name)}"
    params = []
    if inp.db_sslmode is not None:
        params.append(f"sslmode={inp.db_sslmode}")
    if inp.db_sslrootcert is not None:
        params.append(f"sslrootcert={quote(inp.db_sslrootcert, safe='/')}")
    return f"{uri}?{'&'.join(params)}" if params else uri


def render_postgrest_conf(inp: PostgrestConfInput) -> str:
    """Render ``postgrest.conf`` for one domain API.

    Options are written explicitly even where they equal the v14 default, so the file documents
    the security-relevant choices and an upstream default change cannot alter them silently.
    """
    cors = inp.cors_allowed_origins
    if not cors and inp.public_url is not None:
        cors = (_origin_of(inp.public_url),)
    lines = [
        f"# postgrest.conf for domain {inp.domain!r} (schema {inp.schema!r}).",
        f"# Rendered by pgplatform for PostgREST {POSTGREST_VERSION}; edits are overwritten.",
        f"# No password here: libpq reads it from the {PGPASSWORD_ENV} environment variable.",
        "",
        "# Database: through PgBouncer in transaction pooling mode.",
        f"db-uri = {_conf_string(db_uri(inp))}",
        f"db-schemas = {_conf_string(inp.schema)}",
    ]
    if inp.anon_role is not None:
        lines.append(f"db-anon-role = {_conf_string(inp.anon_role)}")
    else:
        lines.append("# db-anon-role unset: requests without a valid JWT are rejected.")
    lines.append(f"db-extra-search-path = {_conf_string(', '.join(inp.extra_search_path))}")
    if inp.pre_request is not None:
        lines.append(f"db-pre-request = {_conf_string(inp.pre_request)}")
        # Set per request like request.headers: pre_request picks this domain's Cache-Control.
        lines.append(f"{SCHEMA_SETTING} = {_conf_string(inp.schema)}")
    if inp.db_max_rows is not None:
        lines.append(f"db-max-rows = {inp.db_max_rows}")
    lines += [
        f"db-pool = {inp.db_pool}",
        f"db-pool-acquisition-timeout = {inp.db_pool_acquisition_timeout}",
        "# Transaction pooling: no prepared statements, no LISTEN/NOTIFY channel.",
        "db-prepared-statements = false",
        "db-channel-enabled = false",
        "# This file is the only configuration source.",
        "db-config = false",
        "db-plan-enabled = false",
        "db-aggregates-enabled = false",
        f"db-tx-end = {_conf_string('commit')}",
        "",
        "# JWT: key file kept current by a Secret volume; re-read on SIGUSR2.",
        f"jwt-secret = {_conf_string('@' + inp.jwt_secret_file)}",
        "jwt-secret-is-base64 = false",
    ]
    if inp.jwt_audience is not None:
        lines.append(f"jwt-aud = {_conf_string(inp.jwt_audience)}")
    lines += [
        f"jwt-role-claim-key = {_conf_string(inp.role_claim_key)}",
        f"jwt-cache-max-entries = {inp.jwt_cache_max_entries}",
        "",
        "# HTTP: API on server-port; /live, /ready and /metrics on admin-server-port.",
        f"server-host = {_conf_string('*')}",
        f"server-port = {inp.server_port}",
        f"admin-server-port = {inp.admin_server_port}",
        f"openapi-mode = {_conf_string(inp.openapi_mode)}",
    ]
    if inp.public_url is not None:
        lines.append(f"openapi-server-proxy-uri = {_conf_string(inp.public_url)}")
    if cors:
        lines.append(f"server-cors-allowed-origins = {_conf_string(','.join(cors))}")
    lines.append(f"server-timing-enabled = {_conf_bool(inp.server_timing_enabled)}")
    if inp.trace_header is not None:
        lines.append(f"server-trace-header = {_conf_string(inp.trace_header)}")
    lines += [
        f"log-level = {_conf_string(inp.log_level)}",
        "log-query = false",
    ]
    return "\n".join(lines) + "\n"


def jwt_key_reload_script(key_file: str, *, interval_seconds: int = 30) -> str:
    """Return the sidecar shell loop that sends PostgREST ``SIGUSR2`` when ``key_file`` changes.

    PostgREST re-reads ``jwt-secret = "@file"`` on ``SIGUSR2`` and empties its JWT cache, but
    nothing tells it the kubelet swapped the Secret volume's files, and ``NOTIFY pgrst`` cannot
    reach it through PgBouncer. The pod needs ``shareProcessNamespace: true`` and both containers
    the same UID (a signal to another process needs the same UID once CAP_KILL is dropped).
    """
    try:
        _check_abs_path("jwt_secret_file", key_file)
    except ValueError as exc:
        raise ValueError(f"jwt_key_reload_script.key_file: {exc}") from None
    if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, int):
        raise ValueError("jwt_key_reload_script.interval_seconds: must be an integer")
    if not 5 <= interval_seconds <= 600:
        raise ValueError(
            f"jwt_key_reload_script.interval_seconds: must be 5..600, got {interval_seconds}"
        )
    return "\n".join(
        [
            "set -u",
            "trap 'exit 0' TERM INT",
            f"key_file='{key_file}'",
            'digest() { sha256sum "$key_file" 2>/dev/null | cut -d " " -f 1; }',
            'last="$(digest)"',
            'echo "watching $key_file (sha256 ${last:-missing})"',
            "while :; do",
            f"  sleep {interval_seconds} & wait $!",
            '  current="$(digest)"',
            '  if [ -n "$current" ] && [ "$current" != "$last" ]; then',
            "    if pkill -USR2 -x postgrest; then",
            '      echo "key file changed (sha256 $current): sent SIGUSR2 to postgrest"',
            '      last="$current"',
            "    else",
            '      echo "key file changed but no postgrest process to signal; retrying" >&2',
            "    fi",
            "  fi",
            "done",
            "",
        ]
    )


SCHEMA_POLL_ENV = "SCHEMA_POLL_SECONDS"
"""Env var of :func:`schema_reload_script`: seconds between two polls of the schema version."""

SCHEMA_POLL_SECONDS = 10
"""Default poll interval: a schema change reaches the API within this plus one cache load."""

DB_URI_ENV = "DB_URI"
"""Env var of :func:`schema_reload_script`: PostgREST's ``db-uri`` (no password; libpq takes
it from ``PGPASSWORD``), so the poller reaches the database exactly as PostgREST does."""

SCHEMA_VERSION_FUNCTION = "platform.schema_version"
"""``db/070_schema_version.sql``: catalog fingerprint of the schemas, executable by the
authenticator."""


def schema_reload_script(schemas: tuple[str, ...], *, process: str = "postgrest") -> str:
    """Return the sidecar loop that sends PostgREST ``SIGUSR1`` when the schema version changes.

    ``SIGUSR1`` makes PostgREST reload its schema cache (PostgREST v14 docs, "Schema Cache
    Reloading"); the ``NOTIFY pgrst`` route is closed because LISTEN cannot pass PgBouncer's
    transaction pooling (``db-channel-enabled = false``). Every ``$SCHEMA_POLL_SECONDS`` the loop
    asks the database for :data:`SCHEMA_VERSION_FUNCTION` of ``schemas`` with ``psql`` through the
    same pool as PostgREST (``$DB_URI``, ``$PGPASSWORD``) and signals on a new value.

    It needs only ``sh``, ``psql`` and ``sleep``: processes are found through ``/proc/*/comm``
    and signalled with the shell's ``kill`` (``shareProcessNamespace: true``, same UID). A
    process is signalled only once it has been seen at a previous poll: an early ``SIGUSR1``
    would kill PostgREST before it installs its handler. The first value read is sent too, so a
    change made while the pod started is never missed (one extra cache load per pod start).
    """
    if not schemas or not isinstance(schemas, tuple):
        raise ValueError("schema_reload_script.schemas: a non-empty tuple of schema names")
    for schema in schemas:
        if not isinstance(schema, str) or not _IDENT.fullmatch(schema):
            raise ValueError(
                f"schema_reload_script.schemas: {schema!r} is not a lower-case SQL identifier"
            )
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,14}", process):
        raise ValueError(f"schema_reload_script.process: not a process name, got {process!r}")
    arguments = ", ".join(f"'{schema}'" for schema in schemas)
    query = f"SELECT {SCHEMA_VERSION_FUNCTION}({arguments})"
    return "\n".join(
        [
            "set -u",
            "trap 'exit 0' TERM INT",
            f'interval="${{{SCHEMA_POLL_ENV}:-{SCHEMA_POLL_SECONDS}}}"',
            # A bad value must not turn the loop into a busy one against the database.
            f'case "$interval" in ""|*[!0-9]*|0) interval={SCHEMA_POLL_SECONDS} ;; esac',
            f"target='{process}'",
            "last=''",
            "previous=''",
            f'echo "polling {query} every ${{interval}}s"',
            "while :; do",
            "  pids=''",
            "  for comm in /proc/[0-9]*/comm; do",
            "    name=''",
            '    { read -r name < "$comm"; } 2>/dev/null || continue',
            '    if [ "$name" = "$target" ]; then',
            '      pid="${comm#/proc/}"',
            '      pids="$pids ${pid%/comm}"',
            "    fi",
            "  done",
            f'  if version="$(psql -X -A -t -q -v ON_ERROR_STOP=1 -d "${DB_URI_ENV}" '
            f'-c "{query}" 2>&1)"; then',
            '    if [ -n "$version" ] && [ "$version" != "$last" ]; then',
            "      sent=''",
            "      for pid in $pids; do",
            '        case " $previous " in',
            '          *" $pid "*) kill -USR1 "$pid" 2>/dev/null && sent="$sent $pid" ;;',
            "        esac",
            "      done",
            '      if [ -n "$sent" ]; then',
            '        echo "schema version $version: sent SIGUSR1 to $target (pid$sent)"',
            '        last="$version"',
            "      else",
            '        echo "schema version $version: waiting for $target to run"',
            "      fi",
            "    fi",
            "  else",
            '    echo "reading the schema version failed: $version" >&2',
            "  fi",
            '  previous="$pids"',
            '  sleep "$interval" & wait $!',
            "done",
            "",
        ]
    )
