"""The advisor's scheduled run: its image, its tag, and the CronJob that runs it.

``python -m tools.advisor`` (docs/advisor.md) reads the live catalog and statistics; run on a
schedule inside the cluster it turns into a standing check. The CronJob runs the image built
from ``tools/advisor/Dockerfile`` with ``--fail-on error``: the JSON report goes to stdout, one
line per finding and the totals line to stderr, both in the Job's log; an error-level finding
fails the Job, which ``PostgresAdvisorFindings`` reports through kube-state-metrics (the same
mechanism as the restore check).

The image tag is derived from the files that make the image (the Dockerfile, ``tools/__init__``
and the advisor's modules), so the pipeline and the stack name the same image without a
hand-kept version: ``<12 hex of their sha256>``.

Credentials: the advisor confirms per-row policies with ``EXPLAIN`` as each API role, prepares
the heaviest statements of ``pg_stat_statements`` (all users' texts) and creates hypothetical
indexes, so it needs membership in the API roles, the statistics of every user and the tables'
privileges: the admin role (the database owner) has all of them, and the Job uses its
Vault-backed Secret like the baseline Job. Everything runs in one transaction that is rolled
back, in a session the server keeps read-only (``PGOPTIONS``), so the run changes nothing.

The CDC database, where an API serves the copies (``AdvisedDatabase``), is checked by a second
container of the same pod: that database has no exposed-schema registry (a superuser file makes
it), so its served schemas are named with ``--schema`` and the copies beside them stay out of
the checks. Either container's error-level finding fails the pod, hence the Job.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from components.render import baseline_job, pods, schedules
from components.render.alerts import ADVISOR_CRONJOB
from components.render.graphql_image import parse_dockerfile, reference_problem

TOOLS_DIR: Final = Path(__file__).resolve().parents[2] / "tools"
"""The image's build context (``docker build -f tools/advisor/Dockerfile tools``)."""
DOCKERFILE: Final = "advisor/Dockerfile"
DEFAULT_REPOSITORY: Final = "ghcr.io/pgplatform/postgres-advisor"
"""Where the pipeline pushes by default (repository variable ``ADVISOR_IMAGE_REPOSITORY``)."""
CRONJOB_NAME: Final = ADVISOR_CRONJOB
"""Fixed: ``PostgresAdvisorFindings`` and the runbook select the CronJob and its Jobs by it."""
APP_NAME: Final = "postgres-advisor"
APP_COMPONENT: Final = "advisor"
INSTANCE: Final = "advisor"
FAIL_ON: Final = "error"
"""Findings of this severity fail the Job (and fire the alert); warnings stay in the log."""
READ_ONLY_OPTIONS: Final = "-c default_transaction_read_only=on"
PACKAGES: Final = ("psycopg[binary]", "pglast")
"""What the image installs with pip, pinned in the Dockerfile."""

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\[\]-]+)==(?P<version>[A-Za-z0-9_.+-]+)$")


def image_files(tools_dir: Path = TOOLS_DIR) -> list[str]:
    """Build-context paths the image is made of: the Dockerfile and what it copies."""
    copied: list[str] = []
    for instruction in parse_dockerfile((tools_dir / DOCKERFILE).read_text(encoding="utf-8")):
        if instruction.keyword == "COPY":
            copied.extend(shlex.split(instruction.argument)[:-1])
    missing = [name for name in copied if not (tools_dir / name).is_file()]
    if missing:
        raise ValueError(f"{DOCKERFILE}: copies files that do not exist: {missing}")
    return [DOCKERFILE, *copied]


def pinned_packages(tools_dir: Path = TOOLS_DIR) -> dict[str, str]:
    """Name -> version of every package the Dockerfile's ``pip install`` names (all pinned)."""
    found: dict[str, str] = {}
    for instruction in parse_dockerfile((tools_dir / DOCKERFILE).read_text(encoding="utf-8")):
        if instruction.keyword != "RUN" or not instruction.argument.startswith("pip install"):
            continue
        for word in shlex.split(instruction.argument)[2:]:
            if word.startswith("-"):
                continue
            match = _PIN.match(word)
            if match is None:
                raise ValueError(f"{DOCKERFILE}: {word!r} is not pinned (name==version)")
            found[match["name"]] = match["version"]
    if set(found) != set(PACKAGES):
        raise ValueError(f"{DOCKERFILE}: pip installs {sorted(found)}, expected {list(PACKAGES)}")
    return found


def image_tag(tools_dir: Path = TOOLS_DIR) -> str:
    """12 hex digits of the sha256 over the image's files (names and contents)."""
    pinned_packages(tools_dir)  # refuses an unpinned recipe
    digest = hashlib.sha256()
    for name in image_files(tools_dir):
        digest.update(name.encode() + b"\0" + (tools_dir / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def default_reference(repository: str = DEFAULT_REPOSITORY) -> str:
    """The image the pipeline builds from this tree, in ``repository``."""
    reference = f"{repository}:{image_tag()}"
    problem = reference_problem(reference)
    if problem:
        raise ValueError(f"repository: {problem}")
    return reference


@dataclass(frozen=True, kw_only=True)
class AdvisedDatabase:
    """A further database the run checks, and the schemas an API serves there."""

    database: str
    schemas: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in (self.database, *self.schemas):
            if not _IDENT.fullmatch(name):
                raise ValueError(f"AdvisedDatabase: {name!r} is not a SQL name")
        if not self.schemas:
            raise ValueError("AdvisedDatabase.schemas: at least one served schema")


@dataclass(frozen=True, kw_only=True)
class AdvisorJobInput:
    """The scheduled advisor run of one stack."""

    connection: baseline_job.BaselineJobSpec
    """How the pod reaches the read-write endpoint as the admin role (``admin_connection``)."""
    schedule: str
    image: str
    others: tuple[AdvisedDatabase, ...] = ()
    """Databases checked besides the connection's (the CDC database serving the copies)."""
    timeout_seconds: int = 900
    uid: int = pods.DEFAULT_UID

    def __post_init__(self) -> None:
        try:
            schedules.check_cronjob_schedule(self.schedule)
        except ValueError as error:
            raise ValueError(f"schedule: {error}") from None
        problem = reference_problem(self.image)
        if problem:
            raise ValueError(f"image: {problem}")
        if not 60 <= self.timeout_seconds <= 6 * 3600:
            raise ValueError(f"timeout_seconds: 60..21600, got {self.timeout_seconds}")


def advisor_command(schemas: tuple[str, ...] = ()) -> list[str]:
    """The container's command: libpq's environment names the database (``--dsn ''``);
    ``schemas``: the ones to check (default: the database's exposed-schema registry)."""
    named = [f"--schema={schema}" for schema in schemas]
    return [
        "python",
        "-m",
        "tools.advisor",
        "--dsn",
        "",
        *named,
        "--json",
        "-",
        "--fail-on",
        FAIL_ON,
    ]


def labels() -> dict[str, str]:
    return pods.labels(APP_NAME, APP_COMPONENT, INSTANCE)


def selector() -> dict[str, str]:
    return pods.selector_labels(APP_NAME, INSTANCE)


def cronjob_spec(inp: AdvisorJobInput) -> dict[str, Any]:
    """CronJob ``spec``: one run at a time, no retries (a finding is not transient).

    No TTL on finished Jobs: kube-state-metrics must keep seeing the failed Job until the next
    run, or ``PostgresAdvisorFindings`` would resolve by itself; the history keeps the last
    reports' logs readable.
    """
    mounts, volumes = baseline_job.ca_mount(inp.connection)

    def container(name: str, database: str, schemas: tuple[str, ...]) -> dict[str, Any]:
        connection = replace(inp.connection, database=database)
        body: dict[str, Any] = {
            "name": name,
            "image": inp.image,
            "imagePullPolicy": "IfNotPresent",
            "command": advisor_command(schemas),
            "env": [
                *baseline_job.psql_environment(connection, application="pgplatform-advisor"),
                # It runs as the admin: a read-only session makes "changes nothing" the server's
                # guarantee, not only the advisor's rollback (every check runs read-only).
                {"name": "PGOPTIONS", "value": READ_ONLY_OPTIONS},
            ],
            "resources": {
                "requests": {"cpu": "50m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "securityContext": pods.container_security_context(inp.uid),
        }
        if mounts:
            body["volumeMounts"] = mounts
        return body

    containers = [
        container("advisor", inp.connection.database, ()),
        *(
            container(f"advisor-{other.database.replace('_', '-')}", other.database, other.schemas)
            for other in inp.others
        ),
    ]
    pod_spec = pods.hardened_pod_spec(
        containers=containers, selector=selector(), volumes=volumes, uid=inp.uid
    )
    # One pod at a time and nothing to spread: a Job is not a replicated service.
    pod_spec.pop("topologySpreadConstraints", None)
    pod_spec["restartPolicy"] = "Never"
    return schedules.check_cronjob_spec(
        schedule=inp.schedule,
        labels=labels(),
        deadline_seconds=inp.timeout_seconds,
        template={"metadata": {"labels": labels()}, "spec": pod_spec},
    )


def network_policy_body(inp: AdvisorJobInput) -> dict[str, Any]:
    """The advisor's pods reach the database and DNS only, and accept nothing."""
    return baseline_job.database_only_policy(inp.connection, selector())
