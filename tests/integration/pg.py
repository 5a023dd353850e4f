"""A throw-away PostgreSQL 15 cluster for integration tests.

Each ``PgCluster`` is a fresh ``initdb`` in a temporary directory, listening on a free
127.0.0.1 port and on a unix socket inside that directory, configured like the deployed
database where it matters to the SQL under test (``scram-sha-256`` everywhere,
``pg_stat_statements`` preloaded, optional TLS with a ``hostssl``-only mode) and for speed
everywhere else (no fsync). ``initdb`` and the server refuse to run as root, so when the tests
run as root the server binaries run as the ``postgres`` OS user (``runuser`` for the one-shot
tools). Long-running servers are children of the test process, not daemons started by
``pg_ctl``: the kernel stops them if the test run is killed before its teardown runs, so an
aborted run leaves no orphaned server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import make_conninfo

from tests.tooling import require_tool

PG_BIN: Final = Path("/usr/lib/postgresql/15/bin")
PG_PACKAGE: Final = "postgresql-15"
SERVER_OS_USER: Final = "postgres"
SUPERUSER: Final = "postgres"
LOOPBACK: Final = "127.0.0.1"

# Test-only speed-ups: a crash loses the cluster, which is thrown away anyway.
_FAST_SETTINGS: Final = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "60",
}


_CONF_BLOCK: Final = "\n# pgplatform test cluster\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def as_server_user(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` OS user when we are root, unchanged otherwise."""
    if os.geteuid() != 0:
        return argv
    return [require_tool("runuser", "util-linux"), "-u", SERVER_OS_USER, "--", *argv]


def give_to_server_user(path: Path) -> None:
    """Hand ``path`` to the OS user the servers run as (a no-op when not root)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVER_OS_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


_PR_SET_PDEATHSIG: Final = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A ``preexec_fn``: the kernel sends ``signum`` to the child when its parent dies.

    Runs after the switch to the server user (a uid change would clear the setting).
    """

    def arrange() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return arrange


def spawn_server(argv: list[str], log_file: Path, *, stop_signal: int) -> subprocess.Popen[bytes]:
    """Start a long-running server as the server OS user, output to ``log_file``.

    ``stop_signal`` is also what the server gets if this (test) process dies first.
    """
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_OS_USER)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with log_file.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(stop_signal),  # noqa: PLW1509 - single-threaded fixture
            **as_user,
        )


def stop_server(process: subprocess.Popen[bytes], *, stop_signal: int, timeout: float = 30) -> None:
    """Send ``stop_signal``, wait, and kill the server if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def run_checked(argv: list[str], *, what: str, timeout: float = 120) -> None:
    """Run ``argv``; on failure raise with its output so the test log says why."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n"
            f"{result.stdout}\n{result.stderr}"
        )


def connect(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    dbname: str,
    sslmode: str = "disable",
    sslrootcert: Path | None = None,
    autocommit: bool = True,
    **params: Any,
) -> psycopg.Connection[Any]:
    """A psycopg connection; shared by direct and pooled (PgBouncer) connections."""
    extra = {"sslrootcert": str(sslrootcert)} if sslrootcert is not None else {}
    conninfo = make_conninfo(
        host=host,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        sslmode=sslmode,
        connect_timeout=10,
        **extra,
        **params,
    )
    return psycopg.connect(conninfo, autocommit=autocommit)


class _TestCertificates:
    """A self-signed CA and a server certificate for ``localhost``/127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.ca_file = directory / "ca.crt"
        self.cert_file = directory / "server.crt"
        self.key_file = directory / "server.key"
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgplatform test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        # PostgreSQL refuses a key file readable by group or others.
        self.key_file.chmod(0o600)
        for path in (self.ca_file, self.cert_file, self.key_file):
            give_to_server_user(path)


class PgCluster:
    """One throw-away cluster; use as a context manager so it is always stopped and removed.

    ``tls=True`` turns on ``ssl`` with a test CA (``ca_file``); ``tls_only=True`` additionally
    makes every TCP login without TLS fail (``hostnossl ... reject``), as in prod.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        tls_only: bool = False,
        settings: Mapping[str, str] | None = None,
        standby_of: PgCluster | None = None,
    ) -> None:
        self.tls = tls or tls_only
        self.standby_of = standby_of
        self.tls_only = tls_only
        self.extra_settings = dict(settings or {})
        self.host = LOOPBACK
        self.port = 0
        self.superuser = SUPERUSER
        self.superuser_password = "pw-" + os.urandom(12).hex()
        self.base_dir: Path | None = None
        self._certificates: _TestCertificates | None = None
        self._server: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------
    @property
    def base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("the cluster is not started")
        return self.base_dir

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        """Unix socket directory (also the place for files the servers must read)."""
        return self.base

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server certificate (TLS clusters only)."""
        if self._certificates is None:
            raise RuntimeError("this cluster runs without TLS")
        return self._certificates.ca_file

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PgCluster:
        """initdb, configure and start; on any failure everything created is removed again.

        A standby (``standby_of``) starts from a base backup of its primary instead and streams
        from it, as a read replica does; its superuser is the primary's.
        """
        initdb = require_tool("initdb", PG_PACKAGE)
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgplatform-pg-"))
        try:
            self.base.chmod(0o700)
            give_to_server_user(self.base)
            if self.standby_of is not None:
                self._clone(self.standby_of)
                return self
            password_file = self.base / "superuser.pw"
            password_file.write_text(self.superuser_password + "\n")
            give_to_server_user(password_file)
            run_checked(
                as_server_user(
                    [
                        initdb,
                        "--pgdata",
                        str(self.data_dir),
                        "--username",
                        self.superuser,
                        "--pwfile",
                        str(password_file),
                        "--auth",
                        "scram-sha-256",
                        "--encoding",
                        "UTF8",
                        "--locale",
                        "C",
                        "--no-sync",
                        "--no-instructions",
                    ]
                ),
                what="initdb",
            )
            password_file.unlink()
            if self.tls:
                self._certificates = _TestCertificates(self.base)
            self._write_hba()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _clone(self, primary: PgCluster) -> None:
        """Base backup of ``primary`` (streaming its WAL), then start as its hot standby."""
        self.superuser_password = primary.superuser_password
        source = make_conninfo(
            host=str(primary.socket_dir),
            port=primary.port,
            user=primary.superuser,
            password=primary.superuser_password,
        )
        run_checked(
            as_server_user(
                [
                    str(PG_BIN / "pg_basebackup"),
                    "--pgdata",
                    str(self.data_dir),
                    "--dbname",
                    source,
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ]
            ),
            what="pg_basebackup",
        )
        standby_signal = self.data_dir / "standby.signal"
        standby_signal.touch()
        give_to_server_user(standby_signal)
        self.extra_settings["primary_conninfo"] = f"'{source}'"
        if self.tls:
            self._certificates = _TestCertificates(self.base)
        self._write_hba()
        self._start_server()

    def _settings(self) -> dict[str, str]:
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "password_encryption": "'scram-sha-256'",
            "shared_preload_libraries": "'pg_stat_statements'",
            **_FAST_SETTINGS,
        }
        if self._certificates is not None:
            settings |= {
                "ssl": "on",
                "ssl_cert_file": f"'{self._certificates.cert_file}'",
                "ssl_key_file": f"'{self._certificates.key_file}'",
                "ssl_ca_file": f"'{self._certificates.ca_file}'",
            }
        return settings | self.extra_settings

    def _write_hba(self) -> None:
        # Streaming standbys of this cluster (``standby_of``) replicate over the socket.
        lines = ["local all all scram-sha-256", "local replication all scram-sha-256"]
        if self.tls_only:
            lines += [
                f"hostssl all all {LOOPBACK}/32 scram-sha-256",
                "hostnossl all all 0.0.0.0/0 reject",
                "hostnossl all all ::/0 reject",
            ]
        else:
            lines += [f"host all all {LOOPBACK}/32 scram-sha-256"]
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")

    def _start_server(self, attempts: int = 3, timeout: float = 60) -> None:
        postgres = str(PG_BIN / "postgres")
        conf = self.data_dir / "postgresql.conf"
        # A standby's copy of the file carries its primary's block: replaced, not added to.
        original = conf.read_text().split(_CONF_BLOCK, 1)[0]
        for _ in range(attempts):
            # Another process may take the free port between probe and bind: retry on a new one.
            self.port = free_port()
            body = "\n".join(f"{key} = {value}" for key, value in self._settings().items())
            conf.write_text(f"{original}{_CONF_BLOCK}port = {self.port}\n{body}\n")
            self._server = spawn_server(
                [postgres, "-D", str(self.data_dir)], self.log_file, stop_signal=signal.SIGINT
            )
            if self._wait_until_ready(timeout):
                return
            self._server = None
            if "Address already in use" not in self.server_log():
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{self.server_log()}")

    def restart(self, mode: str = "fast", timeout: float = 60) -> None:
        """Shut the server down (``fast``: SIGINT, ``immediate``: SIGQUIT) and start it again.

        Same data directory and port, so clients and poolers configured with this address
        reconnect to it: what a PostgreSQL restart in place looks like to them.
        """
        signals = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"restart mode must be one of {sorted(signals)}, got {mode!r}")
        server, self._server = self._server, None
        if server is None:
            raise RuntimeError("the cluster is not running")
        stop_server(server, stop_signal=signals[mode], timeout=timeout)
        postgres = str(PG_BIN / "postgres")
        self._server = spawn_server(
            [postgres, "-D", str(self.data_dir)], self.log_file, stop_signal=signal.SIGINT
        )
        if not self._wait_until_ready(timeout):
            self._server = None
            raise RuntimeError(f"PostgreSQL did not start again:\n{self.server_log()}")

    def _wait_until_ready(self, timeout: float) -> bool:
        """True once the postmaster reports "ready" in its pid file; False if it exited."""
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server is None or self._server.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL was not ready after {timeout}s:\n{self.server_log()}")

    def server_log(self) -> str:
        """The server log (for failure messages)."""
        with contextlib.suppress(OSError):
            return self.log_file.read_text()
        return ""

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove every file of the cluster."""
        server, self._server = self._server, None
        try:
            if server is not None:
                stop_server(server, stop_signal=signal.SIGINT)
        finally:
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- connections -------------------------------------------------------------------------
    def connect(
        self, dbname: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[Any]:
        """A superuser connection over the unix socket (admin work, not what a client sees)."""
        return connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.superuser,
            password=self.superuser_password,
            dbname=dbname,
            autocommit=autocommit,
        )

    def connect_as(
        self,
        user: str,
        password: str,
        *,
        dbname: str = "postgres",
        sslmode: str | None = None,
        autocommit: bool = True,
    ) -> psycopg.Connection[Any]:
        """A TCP connection as a client would open it; TLS clusters verify the server fully."""
        if sslmode is None:
            sslmode = "verify-full" if self.tls else "disable"
        return connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            dbname=dbname,
            sslmode=sslmode,
            sslrootcert=self._certificates.ca_file if self._certificates else None,
            autocommit=autocommit,
        )

    def create_database(self, name: str) -> str:
        """A new, empty database ``name`` (an older one of that name is dropped first)."""
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def apply_sql(self, dbname: str, files: Iterable[tuple[str, str]]) -> None:
        """Run each ``(name, text)`` as superuser, one transaction per file, failing by name."""
        with self.connect(dbname) as conn:
            for name, text in files:
                try:
                    with conn.transaction():
                        conn.execute(text.encode())
                except psycopg.Error as error:
                    raise RuntimeError(f"{name} failed in database {dbname!r}: {error}") from error


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[PgCluster]:
    """``with running_cluster(tls_only=True) as pg:`` -- started, and always removed."""
    cluster = PgCluster(**kwargs)
    with cluster:
        yield cluster
