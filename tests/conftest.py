"""Shared fixtures: recording mocks per test and the offline render of each stack."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from components.settings import StackSettings, decode_config_value, parse_settings
from tools import mocks as recording
from tools.render import read_stack_config, render_in_subprocess

ROOT = Path(__file__).resolve().parent.parent
STACKS = ("staging", "prod")


@pytest.fixture
def pulumi_mocks() -> Iterator[Callable[..., recording.RecordingMocks]]:
    """Install fresh recording mocks for a stack with the given config; one install per test."""
    import pulumi

    def install(
        stack: str,
        config: Mapping[str, str],
        secret_keys: list[str] | None = None,
        *,
        preview: bool = False,
    ) -> recording.RecordingMocks:
        mocks = recording.install(stack, preview=preview)
        pulumi.runtime.set_all_config(dict(config), secret_keys or [])
        return mocks

    yield install
    pulumi.runtime.set_all_config({}, [])


def stack_config(stack: str) -> tuple[dict[str, str], list[str]]:
    """The config of a committed stack file, as the engine would pass it."""
    return read_stack_config(ROOT / f"Pulumi.{stack}.yaml")


def stack_settings(stack: str) -> StackSettings:
    """The validated settings of a committed stack file."""
    config, secrets = stack_config(stack)
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    return parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])


def api_database(s: StackSettings, domain: str) -> Any:
    """The database host a domain's API connects to itself (the CDC copies), as the program
    passes it: CloudNativePG's ``-ro`` Service of the ``postgres`` cluster; None: the pooler."""
    from components import inputs

    if domain not in s.copy_domains():
        return None
    if s.postgres.mode == "external":
        return inputs.DatabaseHost(
            ro_host=s.postgres.ro_host or "",
            port=s.postgres.port,
            cluster=None,
            ca_secret=s.postgres.ca_secret,
        )
    return inputs.DatabaseHost(
        ro_host=f"postgres-db-ro.{s.namespace}.svc.cluster.local",
        port=s.postgres.port,
        cluster="postgres-db",
        ca_secret="postgres-db-ca",
    )


def run_program(
    install: Callable[..., recording.RecordingMocks],
    stack: str,
    config: Mapping[str, str] | None = None,
    secret_keys: list[str] | None = None,
    *,
    preview: bool = False,
) -> recording.RecordingMocks:
    """Run settings + build_platform under mocks (``preview``: as a first preview sees it)."""
    from components.platform import build_platform
    from components.settings import load_settings

    if config is None:
        config, secret_keys = stack_config(stack)
    mocks = install(stack, config, secret_keys, preview=preview)
    try:
        build_platform(load_settings())
    finally:
        # Drain even on failure: a registration left pending would hang the next test.
        recording.settle()
    return mocks


_RENDERED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def rendered_stack(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``rendered_stack(stack)`` → build dir of a fresh offline render (once per session)."""

    def render(stack: str) -> Path:
        if stack not in _RENDERED:
            out = tmp_path_factory.mktemp(f"build-{stack}")
            result = render_in_subprocess(stack, out)
            assert result.returncode == 0, result.stdout + result.stderr
            _RENDERED[stack] = out
        return _RENDERED[stack]

    return render


_PREVIEWS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def rendered_preview(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``rendered_preview(stack)`` → build dir of a fresh preview-mode render (once a session)."""

    def render(stack: str) -> Path:
        if stack not in _PREVIEWS:
            out = tmp_path_factory.mktemp(f"preview-{stack}")
            result = render_in_subprocess(stack, out, preview=True)
            assert result.returncode == 0, result.stdout + result.stderr
            _PREVIEWS[stack] = out
        return _PREVIEWS[stack]

    return render


def resources_json(build: Path) -> list[dict[str, Any]]:
    import json

    data: list[dict[str, Any]] = json.loads((build / "resources.json").read_text())
    return data
