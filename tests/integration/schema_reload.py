"""Run the rendered schema-cache reloader sidecar against a real database tier.

The script is taken from the rendered PostgREST Deployment of a stack and run by ``sh`` with the
container's own environment; only what differs outside the cluster is replaced: the PgBouncer
host and port in ``DB_URI``, the password, and (for tests) the poll interval. PostgREST is a
stand-in process named ``postgrest`` that records each ``SIGUSR1``. Both run in a PID namespace
of their own (``unshare``), as in the pod with ``shareProcessNamespace``, so the script's
``/proc`` scan sees them alone and never another process of this machine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import yaml

from components.render.domain_api import SCHEMA_RELOADER
from components.render.postgrest import DB_URI_ENV, PGPASSWORD_ENV, SCHEMA_POLL_ENV
from tests.integration.pooler import PASSWORDS, RunningStack
from tests.tooling import in_ci, require_tool

# The stand-in for PostgREST: its process name is what the script looks for in /proc.
FAKE_POSTGREST: Final = """#!/bin/sh
trap 'echo "$(date +%s.%N)" >> "$SIGNAL_LOG"' USR1
while :; do sleep 1 & wait $!; done
"""


def postgrest_deployment(build: Path, domain: str) -> dict[str, Any]:
    """The rendered PostgREST Deployment of ``domain``."""
    for path in sorted((build / "manifests").glob("deployment_*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        labels = manifest["metadata"].get("labels", {})
        if (
            labels.get("app.kubernetes.io/name") == "postgrest"
            and labels.get("app.kubernetes.io/instance") == domain
        ):
            return dict(manifest)
    raise AssertionError(f"no PostgREST Deployment for domain {domain!r} in {build}")


def reloader_container(build: Path, domain: str) -> dict[str, Any]:
    pod = postgrest_deployment(build, domain)["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == SCHEMA_RELOADER]
    return dict(container)


def _local_env(
    container: Mapping[str, Any], stack: RunningStack, overrides: Mapping[str, str]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
    assert "valueFrom" in {k for i in container["env"] for k in i if i["name"] == PGPASSWORD_ENV}
    uri = urlsplit(env[DB_URI_ENV])
    user = uri.username or "postgrest"
    local = uri._replace(netloc=f"{user}@{stack.pgbouncer.host}:{stack.pgbouncer.port}")
    env[DB_URI_ENV] = urlunsplit(local)
    env[PGPASSWORD_ENV] = PASSWORDS[user]
    env.update(overrides)
    return env


def _namespace_command() -> list[str]:
    unshare = require_tool("unshare", "util-linux")
    argv = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        argv[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*argv, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        message = f"unshare cannot create a PID namespace here: {probe.stderr.strip()}"
        if in_ci():
            raise AssertionError(message)
        import pytest

        pytest.skip(message)
    return argv


@dataclass
class RunningReloader:
    """The sidecar script and the stand-in PostgREST it signals."""

    process: subprocess.Popen[str]
    signal_log: Path
    output_log: Path

    def signals(self) -> list[float]:
        """Times (epoch seconds) the stand-in received SIGUSR1."""
        if not self.signal_log.exists():
            return []
        return [float(line) for line in self.signal_log.read_text().split()]

    def output(self) -> str:
        return self.output_log.read_text() if self.output_log.exists() else ""

    def wait_for_signals(self, count: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.signals()
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise AssertionError(f"the reloader exited:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(
            f"{count} SIGUSR1 expected within {timeout}s, got {len(self.signals())}:\n"
            f"{self.output()}"
        )


@contextmanager
def running_reloader(
    build: Path, stack: RunningStack, domain: str, *, overrides: Mapping[str, str] | None = None
) -> Iterator[RunningReloader]:
    """The rendered sidecar of ``domain`` polling ``stack``, next to a stand-in PostgREST."""
    require_tool("psql", "postgresql-client-15")
    container = reloader_container(build, domain)
    command = container["command"]
    assert command[:2] == ["sh", "-c"], command
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **_local_env(container, stack, overrides or {}),
    }
    with tempfile.TemporaryDirectory(prefix="pgplatform-reloader-") as tmp:
        work = Path(tmp)
        fake = work / "postgrest"
        fake.write_text(FAKE_POSTGREST)
        fake.chmod(0o755)
        signal_log = work / "signals"
        output_log = work / "output"
        env.update(SIGNAL_LOG=str(signal_log), FAKE_POSTGREST=str(fake), SCRIPT=command[2])
        with output_log.open("w") as out:
            process = subprocess.Popen(
                [*_namespace_command(), "sh", "-c", '"$FAKE_POSTGREST" & exec sh -c "$SCRIPT"'],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                yield RunningReloader(process, signal_log, output_log)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


__all__ = ["SCHEMA_POLL_ENV", "RunningReloader", "reloader_container", "running_reloader"]
