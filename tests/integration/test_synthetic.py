"""The synthetic checks with the real blackbox exporter, started from the rendered config.

Debian's ``prometheus-blackbox-exporter`` (0.23.0, the release the Deployment pins) loads the
rendered ``blackbox.yml`` and probes a local HTTPS server that answers like PostgREST behind the
gateway: the OpenAPI document for an anonymous request (anonymous access on), 401 (off), a wrong
status, a wrong body, or nothing within the timeout. Each probe uses the module and target the
rendered ``Probe`` objects give Prometheus; the test CA reaches the exporter through Go's
``SSL_CERT_FILE``, so the modules run unchanged (``fail_if_not_ssl`` included).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.render import synthetic
from components.render.metrics_catalog import parse_metric_list
from tests.integration.pg import LOOPBACK, free_port
from tests.tooling import require_tool

pytestmark = pytest.mark.integration

METRIC_LIST = (
    Path(__file__).resolve().parent.parent / "data" / "metrics" / "blackbox_exporter-0.23.0.txt"
)
TIMEOUT = "1s"
OPENAPI = json.dumps({"swagger": "2.0", "info": {"title": "PostgREST API"}, "paths": {}})
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$")


@dataclass
class Behaviour:
    """What the fake API answers next; changed by the tests between probes."""

    status: int = 200
    body: str = OPENAPI
    delay: float = 0.0
    ready: bool = True
    seen: list[tuple[str, str]] = field(default_factory=list)


def make_handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            behaviour.seen.append((self.path, self.headers.get("Accept", "")))
            if self.path == "/ready":
                status, body = (200, "") if behaviour.ready else (503, "")
            else:
                time.sleep(behaviour.delay)
                status, body = behaviour.status, behaviour.body
            data = body.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/openapi+json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the prober gave up (timeout case)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A probe that gives up (timeout case) or speaks plain HTTP to the TLS port drops its
    connection mid-request: that is the point of those cases, not a server error to print."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError, resets, broken pipes
            return
        super().handle_error(request, client_address)


def make_ca_and_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (it is its own CA)."""
    openssl = require_tool("openssl", "openssl")
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass
class Harness:
    exporter: str
    api_base: str
    ready_url: str
    behaviour: Behaviour
    config: str

    def probe(self, module: str, target: str) -> dict[str, float]:
        query = urllib.parse.urlencode({"module": module, "target": target})
        with urllib.request.urlopen(  # noqa: S310 - loopback
            f"{self.exporter}/probe?{query}", timeout=10
        ) as response:
            body = response.read().decode()
        samples: dict[str, float] = {}
        for line in body.splitlines():
            match = _SAMPLE.match(line)
            if match and not line.startswith("#"):
                samples[match.group(1)] = float(match.group(2))
        return samples


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"blackbox exporter exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise TimeoutError(f"blackbox exporter not healthy: {log.read_text()}")


def checks_for(base: str, *, anonymous: bool) -> synthetic.SyntheticChecks:
    return synthetic.SyntheticChecks(
        namespace="pgplatform",
        public_base_url=base,
        domains=("identity",),
        anonymous=anonymous,
        ready_services={"identity": "identity-api"},
        admin_port=3001,
        interval="10s",
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    binary = require_tool("prometheus-blackbox-exporter", "prometheus-blackbox-exporter")
    work = tmp_path_factory.mktemp("blackbox")
    cert, key = make_ca_and_cert(work)
    behaviour = Behaviour()
    https = QuietServer((LOOPBACK, 0), make_handler(behaviour))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    https.socket = context.wrap_socket(https.socket, server_side=True)
    plain = QuietServer((LOOPBACK, 0), make_handler(behaviour))
    servers = [https, plain]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    api_base = f"https://localhost:{https.server_address[1]}"
    # Both expectations' modules are in every rendered config; one render serves both.
    config = synthetic.blackbox_config(checks_for(api_base, anonymous=True))
    config_file = work / synthetic.CONFIG_KEY
    config_file.write_text(config)
    checked = subprocess.run(
        [binary, f"--config.file={config_file}", "--config.check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    log = work / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--log.format=json",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SSL_CERT_FILE": str(cert)},
        )
    try:
        exporter = f"http://{LOOPBACK}:{port}"
        wait_until_healthy(f"{exporter}/-/healthy", process, log)
        yield Harness(
            exporter=exporter,
            api_base=api_base,
            ready_url=f"http://{LOOPBACK}:{plain.server_address[1]}/ready",
            behaviour=behaviour,
            config=config,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        for server in servers:
            server.shutdown()
            server.server_close()


def public_probe(harness: Harness, *, anonymous: bool) -> tuple[str, str]:
    """Module and target of the rendered public-route Probe."""
    spec = synthetic.probe_spec(
        checks_for(harness.api_base, anonymous=anonymous), "identity", synthetic.CHECK_PUBLIC
    )
    (target,) = spec["targets"]["staticConfig"]["static"]
    return spec["module"], target


def answer(harness: Harness, *, status: int, body: str = OPENAPI, delay: float = 0.0) -> None:
    harness.behaviour.status, harness.behaviour.body = status, body
    harness.behaviour.delay = delay


@pytest.mark.parametrize(
    ("anonymous", "status", "body", "success"),
    [
        pytest.param(True, 200, OPENAPI, 1, id="anonymous-on-openapi-200-passes"),
        pytest.param(True, 500, OPENAPI, 0, id="anonymous-on-500-fails"),
        pytest.param(True, 401, '{"code":"PGRST302"}', 0, id="anonymous-on-401-fails"),
        pytest.param(True, 200, "<html>default backend</html>", 0, id="anonymous-on-200-not-api"),
        pytest.param(False, 401, '{"code":"PGRST302"}', 1, id="anonymous-off-401-passes"),
        pytest.param(False, 200, OPENAPI, 0, id="anonymous-off-200-fails"),
        pytest.param(False, 404, "", 0, id="anonymous-off-404-lost-route-fails"),
        pytest.param(False, 503, "no healthy upstream", 0, id="anonymous-off-503-fails"),
    ],
)
def test_public_route_check_judges_the_answer(
    harness: Harness, anonymous: bool, status: int, body: str, success: int
) -> None:
    module, target = public_probe(harness, anonymous=anonymous)
    assert target == f"{harness.api_base}/api/identity/"
    answer(harness, status=status, body=body)
    samples = harness.probe(module, target)
    assert samples["probe_success"] == success
    assert samples["probe_http_status_code"] == status
    assert samples["probe_http_ssl"] == 1


def test_public_check_sends_the_openapi_accept_header(harness: Harness) -> None:
    module, target = public_probe(harness, anonymous=True)
    answer(harness, status=200)
    harness.behaviour.seen.clear()
    assert harness.probe(module, target)["probe_success"] == 1
    assert ("/api/identity/", "application/openapi+json") in harness.behaviour.seen


def test_public_check_times_out_on_a_slow_answer(harness: Harness) -> None:
    module, target = public_probe(harness, anonymous=False)
    # The answer would pass (401) if the prober waited 3 s for it; the module's timeout is 1 s.
    answer(harness, status=401, delay=3.0)
    samples = harness.probe(module, target)
    answer(harness, status=401)
    assert samples["probe_success"] == 0
    assert samples["probe_http_status_code"] == 0, "a status arrived: the timeout did not cut"


def test_public_check_refuses_plain_http(harness: Harness) -> None:
    """``fail_if_not_ssl``: a route answering 401 over plain HTTP is not the public API."""
    module, _ = public_probe(harness, anonymous=False)
    harness.behaviour.status = 401
    samples = harness.probe(module, harness.ready_url.replace("/ready", "/api/identity/"))
    assert samples["probe_success"] == 0
    assert samples["probe_http_status_code"] == 401


@pytest.mark.parametrize(("ready", "success"), [(True, 1), (False, 0)])
def test_ready_check_follows_postgrest_ready(harness: Harness, ready: bool, success: int) -> None:
    spec = synthetic.probe_spec(
        checks_for(harness.api_base, anonymous=False), "identity", synthetic.CHECK_READY
    )
    (target,) = spec["targets"]["staticConfig"]["static"]
    assert target == "http://identity-api.pgplatform.svc:3001/ready"
    harness.behaviour.ready = ready
    try:
        # The Service's DNS name exists only in the cluster: the same path on loopback here.
        samples = harness.probe(spec["module"], harness.ready_url)
    finally:
        harness.behaviour.ready = True
    assert samples["probe_success"] == success


def test_every_listed_metric_name_is_produced(harness: Harness) -> None:
    """tests/data/metrics/blackbox_exporter-0.23.0.txt lists only names a real probe emits."""
    seen: set[str] = set()
    for anonymous, status, body in ((True, 200, OPENAPI), (False, 500, "")):
        module, target = public_probe(harness, anonymous=anonymous)
        answer(harness, status=status, body=body)
        seen |= set(harness.probe(module, target))
    answer(harness, status=200)
    listed = parse_metric_list(METRIC_LIST.read_text())
    assert not listed - seen, f"listed but not produced: {sorted(listed - seen)}"
