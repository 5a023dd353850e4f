"""Shared set-up of the database benchmarks: a rendered stack on a throw-away PostgreSQL 15.

Loopback only, every process is a child of the benchmark and is stopped (and its files
removed) on exit; nothing here is a test, the numbers are printed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tools.render import render_in_subprocess

ROOT = Path(__file__).resolve().parent.parent


def render_stack(stack: str, out: Path) -> Path:
    """``python -m tools.render --stack <stack> --out <out>``: the files the stack deploys."""
    result = render_in_subprocess(stack, out)
    if result.returncode != 0:
        raise SystemExit(f"render of {stack} failed:\n{result.stdout}{result.stderr}")
    return out


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def tool(path: Path, package: str) -> str:
    """``path`` when it is an executable, else exit naming the Debian package that provides it."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(f"{path} not found: install the {package!r} package")
    return str(path)
