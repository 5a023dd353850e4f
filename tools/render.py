"""Offline render: run the Pulumi program under mocks and write what it would deploy.

    python -m tools.render --stack prod [--out build/prod] [--config Pulumi.prod.yaml] [--preview]

Writes ``resources.json`` (every registration in order, secrets redacted), ``manifests/`` (one
YAML file per Kubernetes object), ``files/`` (ConfigMap payloads and Vault policies as files),
``sql/`` (the ordered SQL bundle) and prints a summary. Exit 2 on a bad stack config.

``--preview`` runs the program as the first ``pulumi preview`` of the stack sees it (generated
names, random results and what derives from them unknown, see ``tools/mocks.py``) and writes
the same tree to ``build/<stack>-preview``, every unknown value written as ``"[unknown]"``:
what a reviewer and the policy pack see on the pull request that adds the objects.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
REDACTED = "[secret]"
# libyaml's emitter: the pure-Python one dominates the render time of large stacks.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Placeholder handed to the program for a `secure:` value: the render never sees real secrets.
OFFLINE_SECRET = "offline-render-placeholder-secret"  # noqa: S105 - not a credential


class _Phases:
    """Phase lines with elapsed time, so a slow step is visible in CI logs."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.step = 0
        self.start = time.perf_counter()

    def __call__(self, text: str) -> None:
        self.step += 1
        elapsed = time.perf_counter() - self.start
        print(f"[{self.step}/{self.total}] {text} (+{elapsed:.2f}s)", flush=True)


def _project_defaults() -> dict[str, Any]:
    """Defaults declared in Pulumi.yaml's ``config:`` block, which the engine applies too."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text()) or {}
    return {
        key: declaration["default"]
        for key, declaration in (project.get("config") or {}).items()
        if isinstance(declaration, Mapping) and "default" in declaration
    }


def read_stack_config(path: Path) -> tuple[dict[str, str], list[str]]:
    """Config map and secret keys of a stack file, shaped as the Pulumi engine passes them."""
    document = yaml.safe_load(path.read_text()) or {}
    config: dict[str, str] = {}
    secrets: list[str] = []
    values = {**_project_defaults(), **(document.get("config") or {})}
    for key, value in values.items():
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            config[key] = OFFLINE_SECRET
            secrets.append(key)
        elif isinstance(value, Mapping | list):
            # The engine hands an object value over as JSON with its keys sorted (so domains
            # arrive in name order, not in the file's order): the same here.
            config[key] = json.dumps(value, sort_keys=True)
        elif isinstance(value, bool):
            config[key] = "true" if value else "false"
        else:
            config[key] = str(value)
    return config, secrets


def api_version_kind(type_token: str, inputs: Mapping[str, Any]) -> tuple[str, str]:
    """``kubernetes:apps/v1:Deployment`` → (``apps/v1``, ``Deployment``); ``core/v1`` → ``v1``."""
    _, group_version, kind = type_token.split(":", 2)
    api_version = group_version.removeprefix("core/")
    return str(inputs.get("apiVersion") or api_version), str(inputs.get("kind") or kind)


def manifest_of(type_token: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """A Kubernetes object rebuilt from the registration (apiVersion, kind, metadata, rest)."""
    api_version, kind = api_version_kind(type_token, state)
    body = {k: v for k, v in state.items() if k not in {"apiVersion", "kind", "metadata"}}
    return {"apiVersion": api_version, "kind": kind, "metadata": state.get("metadata", {}), **body}


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class _Tree:
    """Writes a render over the previous one in place, then removes whatever this render did
    not write: the tree a fresh directory would get, without deleting and creating again the
    hundreds of files a large stack has (the slowest part of writing it on a busy disk)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: set[Path] = set()
        self.folders: set[Path] = set()

    def folder(self, path: Path) -> None:
        if path not in self.folders:
            path.mkdir(parents=True, exist_ok=True)
            self.folders.add(path)

    def write(self, path: Path, text: str) -> None:
        self.folder(path.parent)
        path.write_text(text)
        self.written.add(path)

    def prune(self) -> None:
        for path in sorted(self.out.rglob("*"), reverse=True):  # children before parents
            if path.is_dir():
                if path not in self.folders:
                    shutil.rmtree(path)
            elif path not in self.written:
                path.unlink()


def write_build(out: Path, mocks: Any, sql: list[tuple[str, str]]) -> Counter[str]:
    """Write every artefact of a finished mocked run; returns resources per type."""
    from tools.mocks import UNKNOWN, redact

    tree = _Tree(out)
    for sub in ("manifests", "files", "sql"):
        tree.folder(out / sub)
    rows = []
    counts: Counter[str] = Counter()
    for recorded in mocks.resources:
        counts[recorded.type] += 1
        inputs = redact(recorded.inputs)
        row: dict[str, Any] = {"type": recorded.type, "name": recorded.name}
        row["parent"] = recorded.parent
        # Only where set, so that a reviewer sees exactly what a destroy would leave behind.
        if recorded.protect:
            row["protect"] = True
        if recorded.retain_on_delete:
            row["retainOnDelete"] = True
        row["inputs"] = inputs
        rows.append(row)
        if not recorded.type.startswith("kubernetes:") or recorded.type.startswith(
            "pulumi:providers:"
        ):
            if recorded.type == "vault:index/policy:Policy":
                name = _file_name(str(inputs.get("name", recorded.name)))
                tree.write(out / "files" / "vault" / f"{name}.hcl", str(inputs.get("policy")))
            continue
        # The answered state is the inputs with what the provider filled in (a generated
        # name): only values that are not the very input objects need redacting again.
        given = recorded.inputs
        state = {
            key: inputs[key] if key in given and value is given[key] else redact(value)
            for key, value in (recorded.outputs or given).items()
        }
        manifest = manifest_of(recorded.type, state)
        name = manifest["metadata"].get("name", recorded.name)
        if name == UNKNOWN:  # a name generated at creation: files go by the logical name
            name = recorded.name
        file = out / "manifests" / f"{_file_name(manifest['kind'].lower())}_{_file_name(name)}.yaml"
        tree.write(file, yaml.dump(manifest, Dumper=_DUMPER, sort_keys=False))
        if manifest["kind"] == "ConfigMap":
            folder = out / "files" / _file_name(name)
            tree.folder(folder)
            for key, value in (manifest.get("data") or {}).items():
                tree.write(folder / _file_name(key), str(value))
    tree.write(out / "resources.json", json.dumps(rows, indent=2) + "\n")
    for file_name, text in sql:
        tree.write(out / "sql" / file_name, text)
    tree.prune()
    return counts


def render(stack: str, out: Path, config_file: Path | None = None, *, preview: bool = False) -> int:
    """Run the whole program offline (as a preview); returns the process exit code."""
    phase = _Phases(4)
    config_path = config_file or ROOT / f"Pulumi.{stack}.yaml"
    if not config_path.is_file():
        print(f"error: no stack file {config_path}", file=sys.stderr)
        return 2
    config, secret_keys = read_stack_config(config_path)
    phase(f"config: {config_path.name} ({len(config)} keys, {len(secret_keys)} secret)")

    import pulumi

    from components import inputs
    from components.platform import build_platform, report_lines
    from components.settings import SettingsError, load_settings
    from tools import mocks as recording

    mocks = recording.install(stack, preview=preview)
    pulumi.runtime.set_all_config(config, secret_keys)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    build_platform(settings)
    recording.settle()
    mode = " (preview: unknown values written as [unknown])" if preview else ""
    phase(f"program: {len(mocks.resources)} resources registered{mode}")

    counts = write_build(out, mocks, inputs.sql_files(settings))
    phase(f"write: {out}")

    width = max(len(t) for t in counts)
    lines = [f"{'type'.ljust(width)}  count", f"{'-' * width}  -----"]
    lines += [f"{t.ljust(width)}  {n:5d}" for t, n in sorted(counts.items())]
    lines.append(f"{'total'.ljust(width)}  {sum(counts.values()):5d}")
    for extra in report_lines(settings):
        lines.append(extra)
    phase("summary")
    print("\n".join(lines))
    return 0


def render_in_subprocess(
    stack: str, out: Path, config: Path | None = None, *, preview: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run this CLI in a fresh interpreter (the Pulumi runtime keeps process-wide state)."""
    argv = [sys.executable, "-m", "tools.render", "--stack", stack, "--out", str(out)]
    if config is not None:
        argv += ["--config", str(config)]
    if preview:
        argv.append("--preview")
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument(
        "--out", type=Path, help="output directory (default build/<stack>[-preview])"
    )
    parser.add_argument("--config", type=Path, help="stack file to read instead")
    parser.add_argument(
        "--preview",
        action="store_true",
        help="render what a first `pulumi preview` sees: values known only after creation "
        "are written as [unknown]",
    )
    args = parser.parse_args(argv)
    default = ROOT / "build" / (f"{args.stack}-preview" if args.preview else args.stack)
    return render(args.stack, args.out or default, args.config, preview=args.preview)


if __name__ == "__main__":
    status = main()
    # Everything is written and closed; skip the interpreter's teardown of the SDKs' thousands
    # of generated classes, which costs about half a second, a quarter of a whole render.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
