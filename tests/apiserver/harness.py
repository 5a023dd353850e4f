"""A real kube-apiserver with its etcd on loopback, for checks no schema validator can make.

The binaries come from ``tools/apiserver/build.sh`` (built from Go modules into a cache outside
the repository). The harness makes its own CA, serving certificate, admin client certificate
and service-account key with openssl, writes one admin kubeconfig, and stops both processes on
exit. No controller runs: objects are stored and admitted (schemas, CEL rules, defaulting,
admission policies, RBAC), never reconciled.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pg import free_port
from tests.tooling import in_ci, require_tool

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "apiserver" / "build.sh"
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 180.0
"""Seconds for etcd + kube-apiserver to become ready (the apiserver's post-start hooks are slow
on a loaded 2-core machine)."""


def built_binaries() -> tuple[Path | None, str]:
    """The complete build cache's ``bin``, or None and the reason it is missing."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--path"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None, (
            "kube-apiserver, etcd and kubectl are not built: run `make apiserver` "
            f"(tools/apiserver/build.sh; {result.stderr.strip()})"
        )
    return Path(result.stdout.strip().splitlines()[-1]) / "bin", ""


def binaries() -> Path:
    """The complete build cache's ``bin``; fails in CI, skips elsewhere, when it is not built."""
    found, reason = built_binaries()
    if found is None:
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_tool("openssl", "openssl")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, text=True)


def make_pki(pki: Path) -> None:
    """CA, serving cert for 127.0.0.1/localhost, admin client cert, service-account key pair."""
    ext = pki / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    client_ext = pki / "client.ext"
    client_ext.write_text(
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=pgplatform-test-ca",
             "-days", "2", "-out", "ca.crt", cwd=pki)  # fmt: skip
    for name, subject, extfile in (
        ("server", "/CN=kube-apiserver", ext),
        # O=system:masters: the admin group RBAC always allows (and may impersonate).
        ("admin", "/O=system:masters/CN=pgplatform-admin", client_ext),
    ):
        _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr",
                 cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", str(extfile),
                 "-out", f"{name}.crt", cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


@dataclass(frozen=True)
class KubeResult:
    """One kubectl run: exit code and both streams."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ApiServer:
    """A running API server and the admin kubectl bound to it."""

    kubectl_path: Path
    kubeconfig: Path
    url: str

    def kubectl(self, *args: str, stdin: str | None = None, user: str | None = None) -> KubeResult:
        """kubectl as the admin, or impersonating ``user`` (``--as``)."""
        argv = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig)]
        if user is not None:
            argv += ["--as", user]
        result = subprocess.run(
            [*argv, *args], input=stdin, capture_output=True, text=True, check=False, timeout=300
        )
        return KubeResult(result.returncode, result.stdout, result.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """kubectl as the admin; the test fails with kubectl's own error when it does."""
        result = self.kubectl(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        """``kubectl get ... -o json`` parsed."""
        data: dict[str, Any] = json.loads(self.ok("get", *args, "-o", "json"))
        return data

    def install(self, crds: Path, namespace: str, *, field_manager: str) -> None:
        """What a cluster holds before the platform: every CRD (Established), the namespace."""
        self.ok("apply", "--server-side", f"--field-manager={field_manager}", "-f", str(crds))
        self.ok("wait", "--for=condition=Established", "--timeout=120s", "crd", "--all")
        self.ok("create", "namespace", namespace)


def _wait_ready(
    server: ApiServer, processes: Sequence[tuple[str, subprocess.Popen[bytes], Path]]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for name, process, log in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{log.read_text()[-4000:]}"
                )
        if server.kubectl("get", "--raw", "/readyz").returncode == 0:
            return
        time.sleep(1.0)
    tails = "\n".join(f"--- {name}\n{log.read_text()[-3000:]}" for name, _, log in processes)
    raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT:.0f} s\n{tails}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_apiserver(bin_dir: Path) -> Iterator[ApiServer]:
    """etcd + kube-apiserver (RBAC on, default admission but claim protection) on free loopback
    ports; stopped after."""
    with tempfile.TemporaryDirectory(prefix="pgplatform-apiserver-") as tmp:
        root = Path(tmp)
        pki = root / "pki"
        pki.mkdir()
        make_pki(pki)
        etcd_client, etcd_peer, secure = free_port(), free_port(), free_port()
        etcd_url = f"http://{LOOPBACK}:{etcd_client}"
        peer_url = f"http://{LOOPBACK}:{etcd_peer}"
        url = f"https://{LOOPBACK}:{secure}"
        kubeconfig = root / "admin.kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": url,
                                "certificate-authority": str(pki / "ca.crt"),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {
                                "client-certificate": str(pki / "admin.crt"),
                                "client-key": str(pki / "admin.key"),
                            },
                        }
                    ],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                    "current-context": "test",
                }
            )
        )
        etcd_log, apiserver_log = root / "etcd.log", root / "kube-apiserver.log"
        started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        try:
            with etcd_log.open("wb") as out:
                started.append(
                    (
                        "etcd",
                        subprocess.Popen(
                            [
                                str(bin_dir / "etcd"),
                                "--name=test",
                                f"--data-dir={root / 'etcd'}",
                                f"--listen-client-urls={etcd_url}",
                                f"--advertise-client-urls={etcd_url}",
                                f"--listen-peer-urls={peer_url}",
                                f"--initial-advertise-peer-urls={peer_url}",
                                f"--initial-cluster=test={peer_url}",
                                "--unsafe-no-fsync",
                                "--log-level=warn",
                            ],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        ),
                        etcd_log,
                    )
                )
            with apiserver_log.open("wb") as out:
                started.append(
                    (
                        "kube-apiserver",
                        subprocess.Popen(
                            [
                                str(bin_dir / "kube-apiserver"),
                                f"--etcd-servers={etcd_url}",
                                f"--bind-address={LOOPBACK}",
                                f"--advertise-address={LOOPBACK}",
                                # A loopback address cannot back the kubernetes Service's
                                # endpoints; nothing in-cluster calls the API server here.
                                "--endpoint-reconciler-type=none",
                                f"--secure-port={secure}",
                                f"--cert-dir={root / 'certs'}",
                                f"--tls-cert-file={pki / 'server.crt'}",
                                f"--tls-private-key-file={pki / 'server.key'}",
                                f"--client-ca-file={pki / 'ca.crt'}",
                                f"--service-account-key-file={pki / 'sa.pub'}",
                                f"--service-account-signing-key-file={pki / 'sa.key'}",
                                "--service-account-issuer=https://kubernetes.default.svc",
                                # Addresses the API server only records; nothing is routed.
                                "--service-cluster-ip-range=10.96.0.0/24",
                                "--authorization-mode=RBAC",
                                # The finalizer this plugin puts on every claim is removed only
                                # by kube-controller-manager's pvc-protection controller, which
                                # does not run here: a deleted claim would wait for it forever.
                                "--disable-admission-plugins=StorageObjectInUseProtection",
                                "--enable-priority-and-fairness=false",
                                "--profiling=false",
                            ],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        ),
                        apiserver_log,
                    )
                )
            server = ApiServer(bin_dir / "kubectl", kubeconfig, url)
            _wait_ready(server, started)
            yield server
        finally:
            for _, process, _ in reversed(started):
                _stop(process)
