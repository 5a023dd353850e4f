"""The GraphQL pilot's image: its Dockerfile read back, its tag, and image references.

The pilot runs an image built from ``components/graphql/Dockerfile`` (PostGraphile installed with
``npm ci`` from the pinned lockfile at build time), so no pod reaches a package registry. The
tag is derived from the three files that make the image, so the pipeline and the stack name the
same image without a hand-kept version: ``<postgraphile version>-<12 hex of their sha256>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from components.render.postgraphile import (
    PACKAGE_DIR,
    PACKAGE_FILES,
    POSTGRAPHILE_VERSION,
    read_package_files,
)

DOCKERFILE: Final = "Dockerfile"
DEFAULT_REPOSITORY: Final = "ghcr.io/pgplatform/graphql-pilot"
"""Where the pipeline pushes by default (repository variable ``GRAPHQL_IMAGE_REPOSITORY``)."""
NODE_MAJORS: Final = (22, 24)
"""Node.js LTS lines the base image may come from (20 left maintenance in April 2026)."""

_REFERENCE = re.compile(
    r"^(?P<name>[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+)"
    r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_NODE_BASE = re.compile(
    r"^docker\.io/library/node:(?P<major>[0-9]+)\.[0-9]+\.[0-9]+-alpine[0-9]+\.[0-9]+$"
)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and its argument text."""

    keyword: str
    argument: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, argument = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), argument.strip()))
    if pending:
        raise ValueError("Dockerfile: ends inside a line continuation")
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage (each starts with its FROM)."""
    out: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            out.append([])
        if not out:
            raise ValueError(f"Dockerfile: {instruction.keyword} before the first FROM")
        out[-1].append(instruction)
    return out


def npm_ci_command(instructions: list[Instruction]) -> list[str]:
    """The ``npm ci ...`` command of the one RUN that installs the tree (up to ``&&``)."""
    found = []
    for instruction in instructions:
        if instruction.keyword == "RUN" and instruction.argument.startswith("npm ci"):
            found.append(shlex.split(instruction.argument.split("&&", 1)[0]))
    if len(found) != 1:
        raise ValueError(f"Dockerfile: expected one RUN npm ci, found {len(found)}")
    return found[0]


def base_image_problem(reference: str) -> str | None:
    """Why a FROM reference is not a pinned Node LTS alpine image, or None."""
    match = _NODE_BASE.match(reference)
    if match is None:
        return (
            f"{reference!r}: use docker.io/library/node:<major>.<minor>.<patch>-alpine<x.y> "
            "(an exact release, never a floating tag)"
        )
    if int(match["major"]) not in NODE_MAJORS:
        return f"{reference!r}: Node {match['major']} is not a supported LTS line {NODE_MAJORS}"
    return None


def image_tag(directory: Path = PACKAGE_DIR) -> str:
    """``<postgraphile version>-<sha256 of Dockerfile, package.json, package-lock.json>[:12]``."""
    read_package_files(directory)  # refuses a tree that does not pin PostGraphile
    digest = hashlib.sha256()
    for name in (DOCKERFILE, *PACKAGE_FILES):
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
    return f"{POSTGRAPHILE_VERSION}-{digest.hexdigest()[:12]}"


def default_reference(repository: str = DEFAULT_REPOSITORY) -> str:
    """The image the pipeline builds from this tree, in ``repository``."""
    reference = f"{repository}:{image_tag()}"
    problem = reference_problem(reference)
    if problem:
        raise ValueError(f"repository: {problem}")
    return reference


def reference_problem(reference: str) -> str | None:
    """Why ``reference`` is not a pinned image reference (registry/name:tag or @sha256), or None."""
    match = _REFERENCE.match(reference) if isinstance(reference, str) else None
    if match is None:
        return (
            f"{reference!r} is not an image reference: use <registry>/<path>:<tag> or "
            "<registry>/<path>@sha256:<digest>, e.g. "
            f"{DEFAULT_REPOSITORY}:{POSTGRAPHILE_VERSION}-0123456789ab"
        )
    if "." not in match["name"].split("/", 1)[0] and ":" not in match["name"].split("/", 1)[0]:
        return f"{reference!r}: name the registry host (e.g. ghcr.io/...)"
    if not match["tag"] and not match["digest"]:
        return f"{reference!r}: pin a tag or a digest"
    if match["tag"] == "latest" and not match["digest"]:
        return f"{reference!r}: 'latest' is not a pinned version"
    return None


def package_versions(directory: Path = PACKAGE_DIR) -> dict[str, str]:
    """Locked versions of the direct dependencies (what the image contains)."""
    lock = json.loads((directory / "package-lock.json").read_text(encoding="utf-8"))
    manifest = json.loads((directory / "package.json").read_text(encoding="utf-8"))
    packages = lock.get("packages", {})
    return {
        name: str(packages.get(f"node_modules/{name}", {}).get("version"))
        for name in manifest.get("dependencies", {})
    }
