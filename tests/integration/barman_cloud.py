"""Barman Cloud driven by the rendered ``ObjectStore``, against a local S3 server.

In a cluster the Barman Cloud plugin's sidecar turns the ``ObjectStore`` into command lines of
the ``barman-cloud-*`` tools (PyPI ``barman[cloud]``, the same tools the sidecar image ships).
``BarmanCloud.from_object_store`` does that translation for the tests: every field the stack
renders must have an entry in ``FIELDS``, or the translation fails naming the field, so a new
rendered setting cannot go untested silently.

PostgreSQL runs as the ``postgres`` OS user and cannot execute this virtualenv's tools (its
interpreter may live in a directory only root reads). So, as in the plugin's architecture where
the PostgreSQL container hands each WAL segment to the sidecar, ``archive_command`` and
``restore_command`` run a small stdlib client (system ``python3``) that hands the request over a
unix socket to ``WalRelay``, which runs the tool in the test process and answers its exit code.

``MotoS3`` starts ``moto_server`` (PyPI ``moto[server]``), an S3-compatible HTTP server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from tests.integration.pg import LOOPBACK, free_port, give_to_server_user
from tests.tooling import in_ci

BARMAN_PACKAGE: Final = "barman[cloud]"
MOTO_PACKAGE: Final = "moto[server]"
SYSTEM_PYTHON: Final = "/usr/bin/python3"
"""An interpreter the ``postgres`` OS user can run (the relay client needs only the stdlib)."""

_WAL_COMPRESSION: Final = {
    "gzip": "--gzip",
    "bzip2": "--bzip2",
    "xz": "--xz",
    "snappy": "--snappy",
    "zstd": "--zstd",
    "lz4": "--lz4",
}
_DATA_COMPRESSION: Final = {
    "gzip": "--gzip",
    "bzip2": "--bzip2",
    "snappy": "--snappy",
    "lz4": "--lz4",
}
_RETENTION_UNITS: Final = {"d": "DAYS", "w": "WEEKS", "m": "MONTHS"}

FIELDS: Final = {
    "configuration.destinationPath": "the tools' URL argument (bucket and prefix)",
    "configuration.endpointURL": "--endpoint-url",
    "configuration.s3Credentials.accessKeyId.name": "AWS_ACCESS_KEY_ID from this Secret",
    "configuration.s3Credentials.accessKeyId.key": "AWS_ACCESS_KEY_ID from this key",
    "configuration.s3Credentials.secretAccessKey.name": "AWS_SECRET_ACCESS_KEY from this Secret",
    "configuration.s3Credentials.secretAccessKey.key": "AWS_SECRET_ACCESS_KEY from this key",
    "configuration.wal.compression": "barman-cloud-wal-archive --gzip (or the named codec)",
    "configuration.wal.maxParallel": "segments the sidecar archives or prefetches at once; "
    "PostgreSQL's archiver here hands them over one by one",
    "configuration.data.compression": "barman-cloud-backup --gzip (or the named codec)",
    "configuration.data.jobs": "barman-cloud-backup --jobs",
    "retentionPolicy": "barman-cloud-backup-delete --retention-policy 'RECOVERY WINDOW OF ...'",
    "instanceSidecarConfiguration.resources.requests.cpu": "the sidecar container, no tool flag",
    "instanceSidecarConfiguration.resources.requests.memory": "the sidecar container, no tool flag",
    "instanceSidecarConfiguration.resources.limits.cpu": "the sidecar container, no tool flag",
    "instanceSidecarConfiguration.resources.limits.memory": "the sidecar container, no tool flag",
}
"""Every ``ObjectStore.spec`` field the harness understands, and what it becomes."""


def require_python_tool(name: str, package: str) -> str:
    """A console script of this virtualenv (or PATH); fail in CI, skip elsewhere, if missing."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    message = f"{name} not found: pip install '{package}' (requirements-dev.txt)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the scalar leaves of a manifest fragment."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def retention_policy(value: str) -> str:
    """CloudNativePG's ``30d`` / ``4w`` / ``6m`` as Barman's retention policy syntax."""
    match = re.fullmatch(r"([1-9][0-9]*)([dwm])", value)
    if match is None:
        raise ValueError(f"retentionPolicy: {value!r} is not <n>d, <n>w or <n>m")
    return f"RECOVERY WINDOW OF {match.group(1)} {_RETENTION_UNITS[match.group(2)]}"


@dataclass(frozen=True)
class BarmanCloud:
    """Command lines of the Barman Cloud tools for one ``ObjectStore`` and server name."""

    url: str
    server: str
    env: Mapping[str, str]
    common: tuple[str, ...]
    wal_archive_flags: tuple[str, ...]
    backup_flags: tuple[str, ...]
    retention: str

    @classmethod
    def from_object_store(
        cls, spec: Mapping[str, Any], *, server: str, secrets: Mapping[str, Mapping[str, str]]
    ) -> BarmanCloud:
        """Translate ``ObjectStore.spec``; ``secrets`` stands for the Secrets it references."""
        unmapped = sorted(set(leaf_paths(spec)) - FIELDS.keys())
        if unmapped:
            raise ValueError(f"ObjectStore fields without a Barman Cloud mapping: {unmapped}")
        conf = spec["configuration"]
        common: list[str] = ["--cloud-provider", "aws-s3"]
        if "endpointURL" in conf:
            common += ["--endpoint-url", conf["endpointURL"]]
        creds = conf["s3Credentials"]
        env = {
            "AWS_ACCESS_KEY_ID": secrets[creds["accessKeyId"]["name"]][creds["accessKeyId"]["key"]],
            "AWS_SECRET_ACCESS_KEY": secrets[creds["secretAccessKey"]["name"]][
                creds["secretAccessKey"]["key"]
            ],
        }
        wal = conf.get("wal", {})
        data = conf.get("data", {})
        wal_flags = [_WAL_COMPRESSION[wal["compression"]]] if "compression" in wal else []
        backup_flags = [_DATA_COMPRESSION[data["compression"]]] if "compression" in data else []
        if "jobs" in data:
            backup_flags += ["--jobs", str(int(data["jobs"]))]
        return cls(
            url=conf["destinationPath"],
            server=server,
            env=env,
            common=tuple(common),
            wal_archive_flags=tuple(wal_flags),
            backup_flags=tuple(backup_flags),
            retention=retention_policy(spec["retentionPolicy"]),
        )

    def run(
        self,
        tool: str,
        *args: str,
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``tool [common] [flags] URL SERVER args...``; raises with the output on failure."""
        result = self.call(tool, *args, flags=flags, env=env, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def call(
        self,
        tool: str,
        *args: str,
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        binary = require_python_tool(tool, BARMAN_PACKAGE)
        argv = [binary, *self.common, *flags, self.url, self.server, *args]
        return subprocess.run(
            argv,
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def backups(self) -> list[dict[str, Any]]:
        """The catalogue as ``barman-cloud-backup-list`` reports it, oldest first."""
        out = self.run("barman-cloud-backup-list", flags=["--format", "json"]).stdout
        return sorted(json.loads(out)["backups_list"], key=lambda b: b["backup_id"])


@dataclass
class MotoS3:
    """A local S3 endpoint (``moto_server``) with one bucket; use as a context manager."""

    bucket: str
    port: int = 0
    _process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> MotoS3:
        server = require_python_tool("moto_server", MOTO_PACKAGE)
        self.port = free_port()
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [server, "-H", LOOPBACK, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 1):
                break
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited:\n{self.log.read_text()}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"moto_server not listening:\n{self.log.read_text()}")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self.log.unlink(missing_ok=True)


_CLIENT: Final = """
import json, os, socket, sys
request = {"op": sys.argv[1], "args": [os.path.abspath(a) if "/" in a else a for a in sys.argv[2:]]}
with socket.socket(socket.AF_UNIX) as s:
    s.connect(os.environ.get("WAL_RELAY") or sys.argv[0].rsplit("/", 1)[0] + "/relay.sock")
    s.sendall(json.dumps(request).encode() + b"\\n")
    answer = s.makefile().readline()
sys.exit(int(answer or "1"))
"""


class WalRelay:
    """Runs the WAL tools for PostgreSQL's ``archive_command``/``restore_command`` (see module).

    ``archive_command``: ``<python> <dir>/relay.py archive %p``;
    ``restore_command``: ``<python> <dir>/relay.py restore %f %p``.
    Archived segments are listed in ``archived``, failed archive attempts in
    ``archive_failures``, segments served to a recovery in ``restored`` (a restore that finds
    nothing is the normal end of the archive, not a failure).
    """

    def __init__(self, barman: BarmanCloud) -> None:
        self.barman = barman
        self.dir = Path(tempfile.mkdtemp(prefix="pgplatform-relay-"))
        self.dir.chmod(0o755)
        self.script = self.dir / "relay.py"
        self.script.write_text(_CLIENT)
        self.script.chmod(0o644)
        self.socket = self.dir / "relay.sock"
        self.archived: list[str] = []
        self.restored: list[str] = []
        self.archive_failures: list[str] = []
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def command(self, op: str) -> str:
        """The PostgreSQL setting value (quoted) for ``archive`` or ``restore``."""
        if not Path(SYSTEM_PYTHON).is_file():
            message = f"{SYSTEM_PYTHON} not found: install the 'python3' package"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
        args = "%p" if op == "archive" else "%f %p"
        return f"'{SYSTEM_PYTHON} {self.script} {op} {args}'"

    def handle(self, op: str, args: list[str]) -> int:
        name = Path(args[0]).name
        if op == "archive":
            (path,) = args
            result = self.barman.call(
                "barman-cloud-wal-archive", path, flags=self.barman.wal_archive_flags
            )
            with self._lock:
                (self.archived if result.returncode == 0 else self.archive_failures).append(name)
            return result.returncode
        wal, destination = args
        result = self.barman.call("barman-cloud-wal-restore", wal, destination)
        if result.returncode == 0:
            give_to_server_user(Path(destination))
            with self._lock:
                self.restored.append(name)
        return result.returncode

    def __enter__(self) -> WalRelay:
        relay = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = json.loads(self.rfile.readline())
                try:
                    code = relay.handle(request["op"], request["args"])
                except Exception:
                    code = 1
                self.wfile.write(f"{code}\n".encode())

        self._server = socketserver.ThreadingUnixStreamServer(str(self.socket), Handler)
        self.socket.chmod(0o666)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)
