"""A stack's database tier run for real from its offline render.

``running_stack(build)`` starts a TLS-only PostgreSQL 15 (like the CloudNativePG cluster,
whose ``pg_hba`` only has ``hostssl`` lines), applies the rendered SQL bundle
(``build/<stack>/sql/``), the domain migrations (the rendered migrations Job's script) and
test passwords, writes
``userlist.txt`` by running the init container script of the rendered PgBouncer Deployment,
and starts a real PgBouncer with the rendered ``pgbouncer.ini``
(``build/<stack>/files/<configmap>/pgbouncer.ini``): only paths, ports and hosts differ from
what the cluster runs, and the server CA is the test cluster's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from tests.integration.pg import PgCluster, give_to_server_user, running_cluster
from tests.integration.pgbouncer import PgBouncerProcess
from tests.tooling import require_tool
from tools.migrate_db import apply_migrations, rendered_migrations

PASSWORDS: Final = {
    "postgrest": "authenticator-test-password",
    "postgraphile": "graphql-test-password",
    "pgbouncer_auth": "lookup-test-password",
    "pgbouncer_exporter": "stats-test-password",
}
# Secret key of the pooler's Vault secret -> login it is the password of.
_SECRET_KEY_USERS: Final = {
    "pgbouncer_auth_password": "pgbouncer_auth",
    "stats_password": "pgbouncer_exporter",
}
_SETTING = re.compile(r"^\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")
_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


def one(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise AssertionError(f"expected exactly one {what}, found {[str(p) for p in paths]}")
    return paths[0]


def rendered_ini(build: Path) -> str:
    """The ``pgbouncer.ini`` of the stack's PgBouncer ConfigMap."""
    return one(sorted((build / "files").glob("*/pgbouncer.ini")), "pgbouncer.ini").read_text()


def rendered_deployment(build: Path) -> dict[str, Any]:
    """The PgBouncer Deployment manifest."""
    path = one(sorted((build / "manifests").glob("deployment_pgbouncer.yaml")), "Deployment")
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    return manifest


def ini_sections(text: str) -> dict[str, dict[str, str]]:
    """``{section: {key: value}}`` of an ini text."""
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        header = _SECTION.match(line)
        setting = _SETTING.match(line)
        if header:
            current = header.group("name")
            sections.setdefault(current, {})
        elif setting and not line.lstrip().startswith(";"):
            sections.setdefault(current, {})[setting.group("key")] = setting.group("value")
    return sections


def container(pod_spec: Mapping[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    found = [c for c in pod_spec.get(key, []) if c["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"no single {key[:-1]} {name!r} in the pod spec")
    return dict(found[0])


def userlist_at_runtime(build: Path, directory: Path) -> str:
    """Run the rendered ``userlist`` init container's script with the test passwords.

    Its Secret-backed variables get the passwords of the logins their Secret keys belong to;
    the only change to the script is the directory it writes to.
    """
    pod = rendered_deployment(build)["spec"]["template"]["spec"]
    init = container(pod, "userlist", init=True)
    auth_file = ini_sections(rendered_ini(build))["pgbouncer"]["auth_file"]
    mount = one(
        [Path(m["mountPath"]) for m in init["volumeMounts"] if m["name"] == "auth"], "auth mount"
    )
    assert Path(auth_file).parent == mount, "the script writes where pgbouncer.ini reads"
    shell, flag, script = init["command"]
    assert (shell, flag) == ("sh", "-c")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for item in init["env"]:
        key = item["valueFrom"]["secretKeyRef"]["key"]
        env[item["name"]] = PASSWORDS[_SECRET_KEY_USERS[key]]
    subprocess.run(
        [require_tool("sh", "dash"), "-c", script.replace(str(mount), str(directory))],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    target = directory / Path(auth_file).name
    assert oct(target.stat().st_mode & 0o777) == oct(0o600), "userlist must be private"
    return target.read_text()


def prepare_database(cluster: PgCluster, build: Path, *, migrations: bool = True) -> str:
    """The stack's database with its SQL bundle, the domain migrations and test passwords."""
    ini = ini_sections(rendered_ini(build))
    dbname = re.search(r"dbname=(\w+)", next(iter(ini["databases"].values())))
    assert dbname is not None
    database = cluster.create_database(dbname.group(1))
    files = [(p.name, p.read_text()) for p in sorted((build / "sql").glob("*.sql"))]
    cluster.apply_sql(database, files)
    if migrations:
        apply_migrations(cluster, database, rendered_migrations(build))
    with cluster.connect(database) as conn:
        for role, password in PASSWORDS.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists:
                conn.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
    return database


@dataclass
class RunningStack:
    """The database tier of one rendered stack."""

    stack: str
    build: Path
    cluster: PgCluster
    pgbouncer: PgBouncerProcess
    database: str
    ini: dict[str, dict[str, str]]

    @property
    def rw_pool(self) -> str:
        return f"{self.database}_rw"

    @property
    def ro_pool(self) -> str:
        return f"{self.database}_ro"

    def connect(self, pool: str | None = None, user: str = "postgrest", **params: Any) -> Any:
        """A client of the pooler, as PostgREST connects (authenticator, SCRAM, no TLS)."""
        return self.pgbouncer.connect(user, PASSWORDS[user], pool or self.rw_pool, **params)


def start_pgbouncer(
    build: Path, cluster: PgCluster, *, ca_file: Path | None = None
) -> PgBouncerProcess:
    """PgBouncer with the rendered ini against ``cluster`` (not started; use as a context)."""
    ini_text = rendered_ini(build)
    work = Path(tempfile.mkdtemp(prefix="pgplatform-userlist-"))
    try:
        give_to_server_user(work)
        userlist = userlist_at_runtime(build, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files: dict[str, Path] = {}
    if "server_tls_ca_file" in ini_sections(ini_text)["pgbouncer"]:
        files["server_tls_ca_file"] = ca_file or cluster.ca_file
    return PgBouncerProcess(
        ini_text, userlist, server_host=cluster.host, server_port=cluster.port, files=files
    )


@contextlib.contextmanager
def running_stack(stack: str, build: Path) -> Iterator[RunningStack]:
    """TLS-only PostgreSQL with the stack's SQL, and PgBouncer from the rendered files."""
    with running_cluster(tls_only=True) as cluster:
        database = prepare_database(cluster, build)
        with start_pgbouncer(build, cluster) as pgbouncer:
            yield RunningStack(
                stack=stack,
                build=build,
                cluster=cluster,
                pgbouncer=pgbouncer,
                database=database,
                ini=ini_sections(rendered_ini(build)),
            )
