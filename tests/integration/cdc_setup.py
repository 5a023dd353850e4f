"""Change data capture set up as the platform does it, on real PostgreSQL 15 clusters.

The publisher is the staging database as the platform builds it (access plan, baseline, the
example domains' migrations, masking); the rendered CDC files run as their runners run them:
through ``psql`` as the admin role (a CREATEROLE database owner, not a superuser, as
CloudNativePG creates it), ``slot.sql`` as the publication role; the subscription is created
the way CloudNativePG's ``Subscription`` controller creates it. Shared by the CDC tests and the
copy database's.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from components.cdc_pipeline import cdc_plan
from components.render import cdc
from components.render.masking import MASKING_FILE
from tests.conftest import stack_settings
from tests.integration.pg import PG_BIN, PgCluster, give_to_server_user
from tests.integration.test_baseline_sql import DATABASE, prepare_stack_database

TARGET = "analytics"
ADMIN = "pgplatform_admin"
ADMIN_PASSWORD = "admin-" + os.urandom(8).hex()
CDC_PASSWORD = "cdc-" + os.urandom(8).hex()
Conn = psycopg.Connection[Any]


# The committed staging stack's tables (migrations/ creates them and the articles' replica
# identity, a unique index on (id, published), that lets the row filter read `published`).
def staging_plan() -> cdc.CdcPlan:
    plan = cdc_plan(stack_settings("staging"))
    assert plan is not None, "the staging stack publishes tables"
    return plan


PLAN = staging_plan()


def psql(
    cluster: PgCluster,
    dbname: str,
    file: Path,
    *,
    user: str = ADMIN,
    password: str = ADMIN_PASSWORD,
    variables: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``psql -X -f file`` over TCP with verification, as the Job's container runs it."""
    given = [f"--variable={name}={value}" for name, value in (variables or {}).items()]
    return subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            *given,
            "-d",
            dbname,
            "-f",
            str(file),
        ],
        env=connection_env(cluster, user, password),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def connection_env(cluster: PgCluster, user: str, password: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "PGHOST": cluster.host,
        "PGPORT": str(cluster.port),
        "PGUSER": user,
        "PGPASSWORD": password,
        "PGSSLMODE": "verify-full" if cluster.tls else "disable",
        **({"PGSSLROOTCERT": str(cluster.ca_file)} if cluster.tls else {}),
    }


def write_files(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def prepare_publisher(cluster: PgCluster, build: Path, *, managed_role: bool = True) -> None:
    """The staging database, the admin as CloudNativePG makes it, and (``managed_role``) the
    CDC role as the Cluster's managed role creates it."""
    prepare_stack_database(cluster, cluster.create_database(DATABASE), build)
    # As after the domain migrations: staging masks identity.accounts.email, so the table lives
    # in identity_private and is published from there (docs/masking.md).
    masking = build / "sql" / MASKING_FILE
    cluster.apply_sql(DATABASE, [(masking.name, masking.read_text())])
    with cluster.connect(DATABASE) as conn:
        conn.execute(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'")
        conn.execute(f"ALTER DATABASE {DATABASE} OWNER TO {ADMIN}")
        if managed_role:
            conn.execute(
                f"CREATE ROLE {cdc.ROLE} LOGIN REPLICATION NOINHERIT PASSWORD '{CDC_PASSWORD}'"
            )
        # Rows written before the subscription: the initial copy must bring them.
        conn.execute(
            "INSERT INTO identity.accounts (sub, display_name, email) "
            "VALUES ('before-1', 'Early Bird', 'early@example.com')"
        )


def prepare_target(cluster: PgCluster) -> None:
    """The analytics database as the ``Database`` object creates it (owned by the admin)."""
    with cluster.connect() as conn:
        exists = conn.execute(f"SELECT 1 FROM pg_roles WHERE rolname = '{ADMIN}'").fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'")
        conn.execute(f'DROP DATABASE IF EXISTS "{TARGET}" WITH (FORCE)')
        conn.execute(f"CREATE DATABASE {TARGET} OWNER {ADMIN}")


def publisher_conninfo(subscriber: PgCluster, publisher: PgCluster) -> str:
    """The connection the rendered ``externalClusters`` entry describes, with its password."""
    spec = cdc.subscription_spec(PLAN, cluster="postgres-db")
    entry = cdc.external_cluster(
        host=publisher.host,
        port=publisher.port,
        database=spec["publicationDBName"],
        password_secret="unused",
        ca_secret="unused",
    )
    assert entry["name"] == spec["externalClusterName"]
    params = dict(entry["connectionParameters"])
    params["password"] = CDC_PASSWORD
    params["sslrootcert"] = str(publisher.ca_file)
    # The test servers run with root's HOME: point libpq past ~/.postgresql's client cert.
    params["sslcert"] = str(subscriber.socket_dir / "no-client.crt")
    params["sslkey"] = str(subscriber.socket_dir / "no-client.key")
    return " ".join(f"{key}={value}" for key, value in params.items())


def subscribe(subscriber: PgCluster, publisher: PgCluster) -> None:
    """``CREATE SUBSCRIPTION`` as CloudNativePG builds it from the rendered objects."""
    spec = cdc.subscription_spec(PLAN, cluster="postgres-db")
    conninfo = publisher_conninfo(subscriber, publisher)
    options = ", ".join(f"{key} = '{value}'" for key, value in spec["parameters"].items())
    with subscriber.connect(spec["dbname"]) as conn:
        conn.execute(
            f"CREATE SUBSCRIPTION {spec['name']} CONNECTION '{conninfo}' "
            f"PUBLICATION {spec['publicationName']} WITH ({options})"
        )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def rows(cluster: PgCluster, query: str, dbname: str = TARGET) -> list[tuple[Any, ...]]:
    with cluster.connect(dbname) as conn:
        return conn.execute(query).fetchall()


def write(cluster: PgCluster, *statements: str) -> None:
    """Writes as the API makes them: as the schema owner's API roles would, through RLS."""
    with cluster.connect(DATABASE) as conn:
        for statement in statements:
            conn.execute(statement)


def job_files(directory: Path) -> Path:
    """The CDC Job's ConfigMap as mounted: every file readable by the servers' OS user."""
    files = write_files(directory, cdc.job_files(PLAN))
    for path in files.iterdir():
        give_to_server_user(path)
    return files


def run_job_script(cluster: PgCluster, files: Path) -> subprocess.CompletedProcess[str]:
    """The cnpg Job's ``apply.sh`` with the Job's environment (admin, CDC password)."""
    env = connection_env(cluster, ADMIN, ADMIN_PASSWORD) | {"CDC_PASSWORD": CDC_PASSWORD}
    return subprocess.run(
        ["sh", str(files / cdc.JOB_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_same_cluster_pipeline(cluster: PgCluster, build: Path, files: Path) -> None:
    """The deployed topology on ``cluster`` (wal_level logical): the staging database, the
    analytics database, the Job's script, the subscription with the slot the script made
    (``create_slot = false``); returns once the initial copy arrived."""
    prepare_publisher(cluster, build)
    prepare_target(cluster)
    script = run_job_script(cluster, files)
    assert script.returncode == 0, script.stderr
    subscribe(cluster, cluster)
    wait_for(
        lambda: rows(cluster, "SELECT count(*) FROM identity_private.accounts") == [(3,)],
        "the initial copy into the analytics database",
    )
