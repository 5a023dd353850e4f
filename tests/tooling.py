"""Locating the real tools integration tests need.

Under CI (``CI=true``) a missing tool is a failure, so a green run always means the tool ran; on
a developer machine the test is skipped with the package that provides the tool.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_EXTRA_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/sbin", "/usr/local/bin", "/usr/bin")


def in_ci() -> bool:
    """True when running in CI, where skipping for a missing tool would hide a broken setup."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, package: str) -> str:
    """Return the absolute path of ``name``; fail in CI, skip elsewhere, when it is missing."""
    found = shutil.which(name)
    if found is None:
        for directory in _EXTRA_DIRS:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    if found is not None:
        return found
    message = f"{name} not found: install the {package!r} package"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
