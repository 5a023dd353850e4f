"""A real PgBouncer started from the rendered ``pgbouncer.ini``.

The point is to test the configuration we deploy, so the rendered text is used as is except for
what cannot be the same on a test machine: file paths, ports and host names. ``override_ini``
changes exactly those values, refuses to add a key the rendered file lacks, and leaves every
other line byte for byte as rendered.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psycopg

from tests.integration.pg import (
    LOOPBACK,
    connect,
    free_port,
    give_to_server_user,
    spawn_server,
    stop_server,
)
from tests.tooling import require_tool

PGBOUNCER_PACKAGE: Final = "pgbouncer"
# [pgbouncer] keys holding a file or directory path: the only ones ``paths`` may override.
PATH_KEYS: Final = frozenset(
    {
        "auth_file",
        "server_tls_ca_file",
        "client_tls_ca_file",
        "client_tls_cert_file",
        "client_tls_key_file",
        "unix_socket_dir",
        "logfile",
        "pidfile",
    }
)
_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")
_SETTING = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)$")
_DB_HOST = re.compile(r"(?<=\bhost=)\S+")
_DB_PORT = re.compile(r"(?<=\bport=)\d+")


def override_ini(
    text: str,
    *,
    listen_addr: str,
    listen_port: int,
    server_host: str,
    server_port: int,
    paths: Mapping[str, str],
) -> str:
    """``text`` with listen address/port, every pool's host/port and ``paths`` replaced."""
    unknown = set(paths) - PATH_KEYS
    if unknown:
        raise ValueError(f"not path settings, refusing to override: {sorted(unknown)}")
    wanted: dict[str, str] = {
        "listen_addr": listen_addr,
        "listen_port": str(listen_port),
        **paths,
    }
    seen: set[str] = set()
    section = ""
    out = []
    for line in text.splitlines():
        header = _SECTION.match(line)
        setting = _SETTING.match(line)
        if header:
            section = header.group("name")
        elif setting and section == "databases":
            conninfo = setting.group("value")
            if not _DB_HOST.search(conninfo) or not _DB_PORT.search(conninfo):
                raise ValueError(f"pool {setting.group('key')!r} lacks host= or port=: {line!r}")
            conninfo = _DB_PORT.sub(str(server_port), _DB_HOST.sub(server_host, conninfo))
            out.append(f"{setting.group('key')} = {conninfo}")
            continue
        elif setting and section == "pgbouncer" and setting.group("key") in wanted:
            key = setting.group("key")
            seen.add(key)
            out.append(f"{key} = {wanted[key]}")
            continue
        out.append(line)
    missing = set(wanted) - seen
    if missing:
        raise ValueError(f"the rendered ini has no {sorted(missing)}: nothing to override")
    return "\n".join(out) + "\n"


class PgBouncerProcess:
    """PgBouncer run from a rendered ini against a test cluster; always stopped on exit.

    ``files`` are extra files (e.g. the CA) copied in and referenced through ``paths``:
    ``{"server_tls_ca_file": ca_path}`` copies ``ca_path`` and points the setting at the copy.
    """

    def __init__(
        self,
        ini_text: str,
        userlist: str,
        *,
        server_host: str,
        server_port: int,
        files: Mapping[str, Path] | None = None,
    ) -> None:
        self.ini_text = ini_text
        self.userlist = userlist
        self.server_host = server_host
        self.server_port = server_port
        self.files = dict(files or {})
        self.host = LOOPBACK
        self.port = 0
        self.work_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        if self.work_dir is None:
            raise RuntimeError("PgBouncer is not started")
        return self.work_dir / "pgbouncer.log"

    @property
    def socket_dir(self) -> Path:
        """Directory of PgBouncer's unix socket (``host=`` for a socket connection)."""
        if self.work_dir is None:
            raise RuntimeError("PgBouncer is not started")
        return self.work_dir

    def log(self) -> str:
        """PgBouncer's output so far (for assertions and failure messages)."""
        try:
            return self.log_file.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def start(self, timeout: float = 15) -> PgBouncerProcess:
        binary = require_tool("pgbouncer", PGBOUNCER_PACKAGE)
        self.work_dir = Path(tempfile.mkdtemp(prefix="pgplatform-pgbouncer-"))
        try:
            give_to_server_user(self.work_dir)
            auth_file = self._write("userlist.txt", self.userlist, mode=0o600)
            # The unix socket (the exporter's way in) lives in the work directory.
            paths = {"auth_file": str(auth_file), "unix_socket_dir": str(self.work_dir)}
            for key, source in self.files.items():
                paths[key] = str(self._write(Path(source).name, Path(source).read_text()))
            self.port = free_port()
            ini = override_ini(
                self.ini_text,
                listen_addr=LOOPBACK,
                listen_port=self.port,
                server_host=self.server_host,
                server_port=self.server_port,
                paths=paths,
            )
            ini_file = self._write("pgbouncer.ini", ini)
            # Not as root (PgBouncer refuses); SIGTERM is an immediate shutdown.
            self._process = spawn_server(
                [binary, str(ini_file)], self.log_file, stop_signal=signal.SIGTERM
            )
            self._wait_until_listening(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _write(self, name: str, text: str, mode: int = 0o644) -> Path:
        path = (self.work_dir or Path()) / name
        path.write_text(text)
        path.chmod(mode)
        give_to_server_user(path)
        return path

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {self._process.returncode}:\n{self.log()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.host}:{self.port}:\n{self.log()}")

    @property
    def pid(self) -> int | None:
        """PgBouncer's process id while it runs (for CPU accounting and signals)."""
        return self._process.pid if self._process is not None else None

    def send_signal(self, signum: int) -> None:
        """What ``kill`` (or the kubelet) does: SIGINT, SIGTERM, SIGUSR1 (pause), SIGUSR2."""
        if self._process is None:
            raise RuntimeError("pgbouncer is not started")
        self._process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int | None:
        """PgBouncer's exit status once it has exited, or None if it still runs at ``timeout``."""
        if self._process is None:
            raise RuntimeError("pgbouncer is not started")
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Terminate PgBouncer (immediate shutdown) and remove its files."""
        process, self._process = self._process, None
        if process is not None:
            stop_server(process, stop_signal=signal.SIGTERM, timeout=10)
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def __enter__(self) -> PgBouncerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def connect(
        self,
        user: str,
        password: str,
        dbname: str,
        *,
        sslmode: str = "disable",
        autocommit: bool = True,
        **params: Any,
    ) -> psycopg.Connection[Any]:
        """A client connection to a pool (or to the ``pgbouncer`` console database).

        Server-side prepared statements are off, as for every client of a transaction pool
        (PostgREST: ``db-prepared-statements = false``): a statement prepared on one server
        connection does not exist on the next.
        """
        conn = connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            dbname=dbname,
            sslmode=sslmode,
            autocommit=autocommit,
            **params,
        )
        conn.prepare_threshold = None
        return conn
