"""PgBouncer configuration: ``pgbouncer.ini`` and the ``userlist.txt`` it authenticates with.

Like CloudNativePG's pooler, the whole configuration is one pure function of its inputs
(``pgbouncer_files``: file name -> content), and users may only set parameters from an explicit
allowlist: listening, authentication, TLS and pooling mode are the platform's, not knobs.

Pools. Clients connect to one of two pool databases for the one PostgreSQL database:
``<database>_rw`` goes to the primary (read-write service), ``<database>_ro`` to the read
replicas (the primary when there is none), both with ``dbname=<database>`` on the server. The
suffix names the route, not the data, so a reader switching to replicas changes only the name.

Authentication: ``auth_query``, not a userlist of every login role.
  * PostgreSQL stays the only store of client passwords. A password rotated from Vault is
    effective at the next login, with no file to re-render and no restart.
  * With ``auth_type = scram-sha-256`` PgBouncer logs in to the server with the keys of the
    client's own SCRAM exchange (pass-through). That only works when PgBouncer holds exactly
    the server's verifier (same salt and iterations), which the lookup returns and a userlist
    rendered from the plaintext secret never would.
  * The lookup runs as ``pgbouncer_auth`` through ``platform.pgbouncer_get_auth`` (SECURITY
    DEFINER, db/050_pgbouncer_auth.sql), which serves only ordinary login roles' verifiers.
The lookup role's server connections are capped (``[users] pgbouncer_auth =
max_user_connections=N``, ``auth_user_max_connections``): a login burst runs its lookups one
after another on those few connections instead of opening a pool's worth, which keeps the role
inside the connection budget (components/render/budget.py).
The userlist then holds just two entries: ``pgbouncer_auth`` in plain text (PgBouncer must log
in to PostgreSQL as it, and a SCRAM verifier cannot be used to log in) and the stats user of the
metrics exporter, which exists only in PgBouncer. In the deployed pod an init container writes
it at start from the pooler's Vault-synced Secret into memory (``pgbouncer_pool.USERLIST_SCRIPT``);
``render_userlist`` is the same format for tests, ``render_userlist_template`` an External
Secrets template for setups that sync the whole file instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final

INI_FILE: Final = "pgbouncer.ini"
USERLIST_FILE: Final = "userlist.txt"
AUTH_USER: Final = "pgbouncer_auth"
AUTH_QUERY: Final = "SELECT usename, passwd FROM platform.pgbouncer_get_auth($1)"
RW_SUFFIX: Final = "_rw"
RO_SUFFIX: Final = "_ro"
# Server connections of the lookup role per PgBouncer instance (see the module doc).
AUTH_USER_MAX_CONNECTIONS: Final = 2
# Seconds the pooler's query_timeout lies above the largest API role statement_timeout.
QUERY_TIMEOUT_MARGIN_S: Final = 5

# Startup parameters PgBouncer cannot track and must drop instead of refusing the client:
# extra_float_digits is sent by lib/pq (the Go pgbouncer/postgres exporters) and by JDBC;
# options by node-postgres (PostGraphile) and libpq when configured. Dropping them is safe:
# per-role settings come from the role (PostgREST applies them per request), never the client.
IGNORE_STARTUP_PARAMETERS: Final = ("extra_float_digits", "options")

SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# Parameters a stack may set through ``parameters``: CloudNativePG's Pooler allowlist, without
# what this module owns (auth, TLS, startup parameters, pooling mode) and the first-class fields
# below, restricted to what PgBouncer 1.18 (the version tested against) understands.
ALLOWED_PARAMETERS: Final = frozenset(
    {
        "application_name_add_host",
        "autodb_idle_timeout",
        "client_idle_timeout",
        "client_login_timeout",
        "disable_pqexec",
        "dns_max_ttl",
        "dns_nxdomain_ttl",
        "idle_transaction_timeout",
        "listen_backlog",
        "log_connections",
        "log_disconnections",
        "log_pooler_errors",
        "log_stats",
        "max_packet_size",
        "max_user_connections",
        "min_pool_size",
        "pkt_buf",
        "reserve_pool_timeout",
        "sbuf_loopcnt",
        "server_check_delay",
        "server_check_query",
        "server_connect_timeout",
        "server_fast_close",
        "server_lifetime",
        "server_login_retry",
        "server_reset_query",
        "server_reset_query_always",
        "server_round_robin",
        "server_tls_ciphers",
        "server_tls_protocols",
        "stats_period",
        "suspend_timeout",
        "tcp_defer_accept",
        "tcp_keepalive",
        "tcp_keepcnt",
        "tcp_keepidle",
        "tcp_keepintvl",
        "tcp_socket_buffer",
        "tcp_user_timeout",
        "verbose",
    }
)

# Defaults of the allowlisted parameters the platform sets: connection events and pooler errors
# are logged (few, long-lived client connections from PostgREST make this cheap), stats every
# minute, and a server connection is recycled hourly so DNS changes and memory bloat do not
# live forever.
DEFAULT_PARAMETERS: Final = MappingProxyType(
    {
        "log_connections": "1",
        "log_disconnections": "1",
        "log_pooler_errors": "1",
        "log_stats": "1",
        "stats_period": "60",
        "server_lifetime": "3600",
        "server_connect_timeout": "5",
        "server_login_retry": "5",
        "client_login_timeout": "15",
        "idle_transaction_timeout": "60",
        "application_name_add_host": "1",
    }
)

# Resetting every server connection when a transaction ends, as in session pooling, would drop
# the session state a transaction can leave behind (a WITH HOLD cursor, set_config(..., false),
# SET SESSION, an advisory lock) for the next client on that connection. Not rendered: its cost,
# measured with bench/pooling.py --reset-cost, exceeded the 10 % allowed; docs/database.md
# ("Session state under transaction pooling") describes the residual risk.
RESET_PARAMETERS: Final = MappingProxyType(
    {"server_reset_query": "DISCARD ALL", "server_reset_query_always": "1"}
)

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HOST = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]+)$")
_LISTEN = re.compile(r"^(\*|[A-Za-z0-9.:-]+)(,(\*|[A-Za-z0-9.:-]+))*$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.,:/=*@%+ -]*$")
_TEMPLATE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PgBouncerConfigError(ValueError):
    """An invalid PgBouncer input; ``field`` names the offending input field."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True, kw_only=True)
class PgBouncerInput:
    """Everything ``pgbouncer.ini`` depends on; validated on construction."""

    database: str
    """PostgreSQL database both pools serve."""
    rw_host: str
    """Host of the primary (read-write) endpoint."""
    ro_host: str | None = None
    """Host of the read replicas; None routes the ro pool to the primary."""
    server_port: int = 5432
    listen_addr: str = "0.0.0.0"  # noqa: S104 - the pod IP, reached via the Service
    listen_port: int = 5432
    unix_socket_dir: str = ""
    """Empty disables unix sockets (read-only root file system, TCP only)."""
    auth_file: str = "/etc/pgbouncer/auth/userlist.txt"
    server_tls_sslmode: str | None = None
    """None: ``verify-full`` when a CA file is given, else ``require``."""
    server_tls_ca_file: str | None = None
    client_tls_sslmode: str = "disable"
    client_tls_cert_file: str | None = None
    client_tls_key_file: str | None = None
    max_client_conn: int = 1000
    default_pool_size: int = 20
    """Server connections per (pool database, user) pair."""
    reserve_pool_size: int = 5
    max_db_connections: int = 0
    """Cap of server connections per pool database, all users together (0 = no cap)."""
    server_idle_timeout: int = 600
    query_wait_timeout: int = 30
    query_timeout: int = 0
    """Seconds a query may run before PgBouncer cancels it (0 = never): a backstop above the
    API roles' statement timeouts (``query_timeout_backstop``), for a client that skipped them."""
    auth_user_max_connections: int = AUTH_USER_MAX_CONNECTIONS
    """Server connections of the auth_query role per instance, over all pools (>= 1)."""
    stats_users: tuple[str, ...] = ("pgbouncer_exporter",)
    admin_users: tuple[str, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Extra allowlisted settings (``ALLOWED_PARAMETERS``); override ``DEFAULT_PARAMETERS``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        self._check_names()
        self._check_numbers()
        self._check_tls()
        self._check_parameters()

    def _check_names(self) -> None:
        if not _IDENTIFIER.match(self.database):
            raise PgBouncerConfigError("database", f"{self.database!r} is not a SQL identifier")
        for name in ("rw_host", "ro_host"):
            host = getattr(self, name)
            if host is not None and not _HOST.match(host):
                raise PgBouncerConfigError(name, f"{host!r} is not a host name or IP address")
        if not _LISTEN.match(self.listen_addr):
            raise PgBouncerConfigError("listen_addr", f"{self.listen_addr!r} is not an address")
        if self.unix_socket_dir and not _PATH.match(self.unix_socket_dir):
            raise PgBouncerConfigError("unix_socket_dir", "must be empty or an absolute path")
        for name in (
            "auth_file",
            "server_tls_ca_file",
            "client_tls_cert_file",
            "client_tls_key_file",
        ):
            path = getattr(self, name)
            if path is not None and not _PATH.match(path):
                raise PgBouncerConfigError(name, f"{path!r} is not an absolute path")
        for name in ("stats_users", "admin_users"):
            users = getattr(self, name)
            if isinstance(users, str):
                raise PgBouncerConfigError(name, "must be a tuple of user names, not a string")
            for user in users:
                if not _IDENTIFIER.match(user) or user == AUTH_USER:
                    raise PgBouncerConfigError(name, f"{user!r} is not a usable user name")

    def _check_numbers(self) -> None:
        minimum = {
            "server_port": 1,
            "listen_port": 1,
            "max_client_conn": 1,
            "default_pool_size": 1,
            "reserve_pool_size": 0,
            "max_db_connections": 0,
            "server_idle_timeout": 0,
            "query_wait_timeout": 0,
            "query_timeout": 0,
            "auth_user_max_connections": 1,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PgBouncerConfigError(name, f"must be an integer >= {low} (got {value!r})")
        for name in ("server_port", "listen_port"):
            if getattr(self, name) > 65535:
                raise PgBouncerConfigError(name, "must be a TCP port (<= 65535)")
        if self.max_client_conn < self.default_pool_size:
            raise PgBouncerConfigError(
                "max_client_conn", "must be >= default_pool_size (clients queue for servers)"
            )
        if 0 < self.max_db_connections < self.default_pool_size:
            raise PgBouncerConfigError(
                "max_db_connections", "must be 0 (no cap) or >= default_pool_size"
            )

    def _check_tls(self) -> None:
        mode = self.server_tls_sslmode
        if mode is not None and mode not in SSLMODES:
            raise PgBouncerConfigError("server_tls_sslmode", f"{mode!r} is not one of {SSLMODES}")
        if mode in ("verify-ca", "verify-full") and self.server_tls_ca_file is None:
            raise PgBouncerConfigError(
                "server_tls_ca_file", f"required with server_tls_sslmode {mode!r}"
            )
        if self.server_tls_ca_file is not None and mode not in (None, "verify-ca", "verify-full"):
            raise PgBouncerConfigError(
                "server_tls_sslmode",
                f"{mode!r} would ignore server_tls_ca_file: use 'verify-full' (or 'verify-ca')",
            )
        if self.client_tls_sslmode not in SSLMODES:
            raise PgBouncerConfigError(
                "client_tls_sslmode", f"{self.client_tls_sslmode!r} is not one of {SSLMODES}"
            )
        if self.client_tls_sslmode != "disable":
            for name in ("client_tls_cert_file", "client_tls_key_file"):
                if getattr(self, name) is None:
                    raise PgBouncerConfigError(name, "required when client TLS is enabled")

    def _check_parameters(self) -> None:
        first_class = {f.name for f in fields(self)}
        for key, value in self.parameters.items():
            if key in first_class:
                raise PgBouncerConfigError(f"parameters.{key}", f"set the field {key!r} instead")
            if key not in ALLOWED_PARAMETERS:
                raise PgBouncerConfigError(
                    f"parameters.{key}",
                    "not an allowed parameter (auth, TLS, listening and pool mode are fixed); "
                    f"allowed: {sorted(ALLOWED_PARAMETERS)}",
                )
            if not isinstance(value, str) or not _VALUE.match(value) or value != value.strip():
                raise PgBouncerConfigError(
                    f"parameters.{key}", f"{value!r} is not a single-line plain value"
                )

    @property
    def resolved_server_sslmode(self) -> str:
        """The server TLS mode in effect: verify the server whenever its CA is known."""
        if self.server_tls_sslmode is not None:
            return self.server_tls_sslmode
        return "verify-full" if self.server_tls_ca_file else "require"

    @property
    def rw_pool(self) -> str:
        """Pool database name clients use for reads and writes (primary)."""
        return self.database + RW_SUFFIX

    @property
    def ro_pool(self) -> str:
        """Pool database name clients use for read-only work (replicas)."""
        return self.database + RO_SUFFIX


def query_timeout_backstop(role_timeouts_ms: Iterable[int]) -> int:
    """PgBouncer's ``query_timeout`` (s): above the largest API role statement_timeout.

    The database cancels a request at its role's limit; PgBouncer cancels only what runs
    ``QUERY_TIMEOUT_MARGIN_S`` longer than any role may (a client that never applied its role's
    timeout), so it never races the role's own limit.
    """
    timeouts = list(role_timeouts_ms)
    if not timeouts or min(timeouts) < 1:
        raise PgBouncerConfigError("query_timeout", "needs each API role's timeout (ms, >= 1)")
    return -(-max(timeouts) // 1000) + QUERY_TIMEOUT_MARGIN_S


def _line(key: str, value: str | int) -> str:
    return f"{key} = {value}".rstrip()


def render_pgbouncer_ini(inp: PgBouncerInput) -> str:
    """The complete ``pgbouncer.ini``; the same inputs always give the same text."""
    ro_host = inp.ro_host or inp.rw_host
    settings: dict[str, str | int] = {
        "listen_addr": inp.listen_addr,
        "listen_port": inp.listen_port,
        "unix_socket_dir": inp.unix_socket_dir,
        "pool_mode": "transaction",
        "auth_type": "scram-sha-256",
        "auth_file": inp.auth_file,
        "auth_user": AUTH_USER,
        "auth_query": AUTH_QUERY,
        "admin_users": ",".join(inp.admin_users),
        "stats_users": ",".join(inp.stats_users),
        "ignore_startup_parameters": ",".join(IGNORE_STARTUP_PARAMETERS),
        "max_client_conn": inp.max_client_conn,
        "default_pool_size": inp.default_pool_size,
        "reserve_pool_size": inp.reserve_pool_size,
        "max_db_connections": inp.max_db_connections,
        "server_idle_timeout": inp.server_idle_timeout,
        "query_wait_timeout": inp.query_wait_timeout,
        "query_timeout": inp.query_timeout,
        "server_tls_sslmode": inp.resolved_server_sslmode,
    }
    if inp.server_tls_ca_file:
        settings["server_tls_ca_file"] = inp.server_tls_ca_file
    settings["client_tls_sslmode"] = inp.client_tls_sslmode
    if inp.client_tls_sslmode != "disable":
        settings["client_tls_cert_file"] = inp.client_tls_cert_file or ""
        settings["client_tls_key_file"] = inp.client_tls_key_file or ""
    settings |= {**DEFAULT_PARAMETERS, **inp.parameters}
    lines = [
        ";; pgbouncer.ini rendered by pgplatform (components/render/pgbouncer.py).",
        ";; Change the stack configuration, not this file.",
        "[databases]",
        f"{inp.rw_pool} = host={inp.rw_host} port={inp.server_port} dbname={inp.database}",
        f"{inp.ro_pool} = host={ro_host} port={inp.server_port} dbname={inp.database}",
        "",
        "[users]",
        f"{AUTH_USER} = max_user_connections={inp.auth_user_max_connections}",
        "",
        "[pgbouncer]",
        *(_line(key, value) for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def pgbouncer_files(inp: PgBouncerInput) -> dict[str, str]:
    """ConfigMap data: file name -> content (the userlist is a Secret, see the module doc)."""
    return {INI_FILE: render_pgbouncer_ini(inp)}


def _userlist_line(user: str, secret: str) -> str:
    if not _IDENTIFIER.match(user):
        raise PgBouncerConfigError("users", f"{user!r} is not a user name")
    return f'"{user}" "{secret}"'


def render_userlist(passwords: Mapping[str, str]) -> str:
    """``userlist.txt`` from literal passwords or SCRAM verifiers (quotes are doubled)."""
    lines = []
    for user, secret in sorted(passwords.items()):
        if not secret or any(ch in secret for ch in "\r\n\0"):
            raise PgBouncerConfigError(f"users.{user}", "password must be one non-empty line")
        lines.append(_userlist_line(user, secret.replace('"', '""')))
    return "\n".join(lines) + "\n"


def render_userlist_template(secret_keys: Mapping[str, str]) -> str:
    """``userlist.txt`` as an External Secrets (engine v2) template: user -> secret data key.

    The operator fills in each value from Vault and doubles any double quote, as PgBouncer's
    file format requires, so no value is ever rendered by Pulumi or kept in its state.
    """
    lines = []
    for user, key in sorted(secret_keys.items()):
        if not _TEMPLATE_KEY.match(key):
            raise PgBouncerConfigError(f"users.{user}", f"{key!r} is not a template data key")
        lines.append(_userlist_line(user, f'{{{{ .{key} | replace "\\"" "\\"\\"" }}}}'))
    return "\n".join(lines) + "\n"


def server_connections_per_host(inp: PgBouncerInput, *, users: int) -> dict[str, int]:
    """Most server connections one PgBouncer instance opens to each PostgreSQL host.

    Each (pool database, user) pair holds up to ``default_pool_size + reserve_pool_size``
    connections and ``max_db_connections`` caps a pool database across its users. Without
    replicas both pools land on the primary. Multiply by the PgBouncer replicas and keep the
    sum below PostgreSQL's ``max_connections`` minus its reserved and admin slots.
    """
    if users < 1:
        raise PgBouncerConfigError("users", "at least one user connects through the pools")
    per_pool = (inp.default_pool_size + inp.reserve_pool_size) * users
    if inp.max_db_connections:
        per_pool = min(per_pool, inp.max_db_connections)
    hosts: dict[str, int] = {}
    for host in (inp.rw_host, inp.ro_host or inp.rw_host):
        hosts[host] = hosts.get(host, 0) + per_pool
    return hosts
