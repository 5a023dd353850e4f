"""The copy database read by an API on a read replica, on real PostgreSQL 15.

One cluster as the staging stack deploys it: the application database (baseline, migrations,
masking) and the ``analytics`` database fed by change data capture (the Job's script, the
subscription), then the copy database's bundle applied twice by ``psql`` as the admin (a
CREATEROLE database owner, not a superuser), the ``analytics`` domain's migrations through the
real runner (sealing after each migration), and ``seal.sql``. A physical streaming standby of
that cluster plays the ``-ro`` Service: PostgREST's connection is the authenticator's, verified
TLS, to the standby's ``analytics`` database, and each request is PostgREST's per-request
transaction.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from components.cdc_pipeline import copy_database_input
from components.render import copy_database
from components.render.access import AUTHENTICATOR
from components.render.baseline import APPLY_SCRIPT, SCHEMA_SETTING
from components.render.migrations import MIGRATIONS_DIR, plan_migrations, write_bundle
from components.render.migrations import SCRIPT as MIGRATE_SCRIPT
from components.render.migrations import job_bundle as migrations_bundle
from tests.conftest import stack_settings
from tests.integration.cdc_setup import (
    ADMIN,
    ADMIN_PASSWORD,
    PLAN,
    TARGET,
    job_files,
    psql,
    rows,
    start_same_cluster_pipeline,
    wait_for,
    write,
)
from tests.integration.pg import PgCluster, running_cluster
from tests.integration.test_advisor_job import run_cronjob
from tests.integration.test_baseline_sql import AUTHENTICATOR_PASSWORD, DATABASE
from tests.integration.test_security_model import claims, request
from tools.migrate_db import COPIES_CONFIGMAP_GLOB, COPIES_MIGRATIONS_GLOB, rendered_config_map

pytestmark = pytest.mark.integration

SETTINGS = stack_settings("staging")
SERVED: Final = ("analytics",)
READERS: Final = {"anonymous": ("api_anonymous", ""), "user": ("api_user", "user-1")}
Conn = psycopg.Connection[Any]


COPY = copy_database_input(SETTINGS)
assert SETTINGS.cdc.database == TARGET


@dataclass
class CopyStack:
    primary: PgCluster
    standby: PgCluster
    bundle: Path
    admin_member_after_apply: bool


def run(cluster: PgCluster, file: Path) -> subprocess.CompletedProcess[str]:
    """A Job's ``psql -X -f file`` as the admin in the copy database; fails with its output."""
    done = psql(cluster, TARGET, file)
    assert done.returncode == 0, f"{file.name}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def stack(
    rendered_stack: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CopyStack]:
    base = tmp_path_factory.mktemp("copydb")
    cdc_files = job_files(base / "cdc")
    build = rendered_stack("staging")
    # The two ConfigMaps of the rendered stack, as its Jobs mount them.
    bundle = rendered_config_map(build, COPIES_CONFIGMAP_GLOB)
    migrations = rendered_config_map(build, COPIES_MIGRATIONS_GLOB)
    assert {p.name: p.read_text() for p in bundle.iterdir()} == copy_database.job_bundle(COPY)
    migrate = migrations / MIGRATE_SCRIPT
    with running_cluster(tls=True, settings={"wal_level": "logical"}) as primary:
        start_same_cluster_pipeline(primary, build, cdc_files)
        run(primary, bundle / APPLY_SCRIPT)
        run(primary, bundle / APPLY_SCRIPT)
        [(member,)] = rows(primary, f"SELECT pg_has_role('{ADMIN}', 'pgplatform_owner', 'MEMBER')")
        run(primary, migrate)
        run(primary, bundle / copy_database.SEAL_FILE)
        with running_cluster(tls=True, standby_of=primary) as standby:
            yield CopyStack(primary, standby, bundle, bool(member))


def api(stack: CopyStack) -> Conn:
    """PostgREST's connection: the authenticator, verified TLS, the replica's copy database."""
    return stack.standby.connect_as(AUTHENTICATOR, AUTHENTICATOR_PASSWORD, dbname=TARGET)


def as_caller(conn: Conn, caller: str, query: str) -> list[tuple[Any, ...]]:
    role, sub = READERS[caller]
    return request(conn, role, claims(role, sub), query, app_settings={SCHEMA_SETTING: SERVED[0]})


def published_articles(stack: CopyStack) -> int:
    [(count,)] = rows(
        stack.primary, "SELECT count(*) FROM content.articles WHERE published", DATABASE
    )
    return int(count)


def replayed(stack: CopyStack) -> None:
    """Wait until the standby replayed everything the primary has written so far."""
    [(lsn,)] = rows(stack.primary, "SELECT pg_current_wal_lsn()::text")
    wait_for(
        lambda: rows(stack.standby, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") == [(True,)],
        "the standby to replay the primary's WAL",
    )


STATS: Final = "SELECT published, articles FROM analytics.article_stats ORDER BY published"


def test_the_setup_leaves_the_admin_no_standing_membership(stack: CopyStack) -> None:
    assert stack.admin_member_after_apply is False


def test_the_standby_serves_the_analytics_domain_from_the_copies(stack: CopyStack) -> None:
    assert rows(stack.standby, "SELECT pg_is_in_recovery()") == [(True,)]
    expected = published_articles(stack)
    assert expected >= 1
    with api(stack) as conn:
        wait_for(
            lambda: as_caller(conn, "user", STATS) == [(True, expected)],
            "the replica to serve the copies",
        )
        assert as_caller(conn, "anonymous", STATS) == [(True, expected)]


def test_only_the_analytics_migrations_ran_there(stack: CopyStack) -> None:
    ledger = rows(stack.standby, "SELECT domain, version FROM platform.migration ORDER BY 1, 2")
    assert ledger == [("analytics", 1)]


def test_a_published_article_arrives_on_the_replica_and_a_draft_never_does(
    stack: CopyStack,
) -> None:
    before = published_articles(stack)
    write(
        stack.primary,
        "INSERT INTO content.articles (author_sub, title, published) "
        "VALUES ('editor-1', 'copydb draft', false)",
    )
    write(
        stack.primary,
        "INSERT INTO content.articles (author_sub, title, published) "
        "VALUES ('editor-1', 'copydb news', true)",
    )
    assert published_articles(stack) == before + 1
    with api(stack) as conn:
        wait_for(
            lambda: as_caller(conn, "anonymous", STATS) == [(True, before + 1)],
            "the new article on the replica",
        )
        # The draft was committed first: had it been published, it would be here by now.
        titles = as_caller(
            conn, "user", "SELECT title FROM content.articles WHERE title LIKE 'copydb %'"
        )
    assert titles == [("copydb news",)]


def test_no_personal_column_exists_in_the_copy_database(stack: CopyStack) -> None:
    anywhere = "SELECT a.attrelid::regclass::text FROM pg_attribute a WHERE a.attname = 'email'"
    assert rows(stack.primary, anywhere, DATABASE) != []
    assert rows(stack.standby, anywhere) == []
    for table in PLAN.tables:
        columns = (
            "SELECT attname::text FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped "
            f"AND attrelid = '{table.qualified}'::regclass ORDER BY 1"
        )
        source = {name for (name,) in rows(stack.primary, columns, DATABASE)}
        assert source - set(table.column_names), f"{table.qualified} has unpublished columns"
        assert [n for (n,) in rows(stack.standby, columns)] == sorted(table.column_names)


def test_the_authenticator_alone_reads_nothing(stack: CopyStack) -> None:
    with api(stack) as conn:
        for relation in (
            "analytics.article_stats",
            "content.articles",
            "identity_private.accounts",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {relation}")


def test_writes_through_the_replica_connection_are_refused(stack: CopyStack) -> None:
    with api(stack) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        request(
            conn,
            "api_admin",
            claims("api_admin", "admin-1"),
            "INSERT INTO content.articles (id, title, published) VALUES (-1, 'forged', true)",
        )


def test_api_roles_reach_only_the_served_and_copy_schemas(stack: CopyStack) -> None:
    reachable = "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(oid, 'USAGE') " + (
        "ORDER BY 1"
    )
    expected = sorted([*SERVED, *COPY.copy_schemas, "platform", "pg_catalog", "information_schema"])
    copies = ", ".join(f"'{s}.{t}'" for s, t in COPY.copies)
    writable = (
        "SELECT count(*) FROM unnest(ARRAY[" + copies + "]) t, "
        "unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p "
        "WHERE has_table_privilege(t, p)"
    )
    with api(stack) as conn:
        for caller in READERS:
            assert [n for (n,) in as_caller(conn, caller, reachable)] == expected, caller
            assert as_caller(conn, caller, writable) == [(0,)], caller
        # An API role that no served schema is granted to is stopped by the pre-request hook.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            request(conn, "api_service_cms", claims("api_service_cms", "cms-1"), STATS)


def test_seal_secures_a_table_a_migration_creates(stack: CopyStack) -> None:
    secured = (
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE oid = 'analytics.daily_counts'::regclass"
    )
    with stack.primary.connect(TARGET) as conn:
        conn.execute("SET ROLE pgplatform_owner")
        conn.execute("CREATE TABLE analytics.daily_counts (day date PRIMARY KEY, n bigint)")
    assert rows(stack.primary, secured) == [(False, False)]
    run(stack.primary, stack.bundle / copy_database.SEAL_FILE)
    assert rows(stack.primary, secured) == [(True, True)]
    run(stack.primary, stack.bundle / copy_database.SEAL_FILE)
    # A materialized view (no row level security possible) is refused.
    with stack.primary.connect(TARGET) as conn:
        conn.execute("SET ROLE pgplatform_owner")
        conn.execute("CREATE MATERIALIZED VIEW analytics.counts AS SELECT 1 AS n")
    refused = psql(stack.primary, TARGET, stack.bundle / copy_database.SEAL_FILE)
    assert refused.returncode != 0
    assert "a served schema holds no materialized view" in refused.stderr
    with stack.primary.connect(TARGET) as conn:
        conn.execute("DROP MATERIALIZED VIEW analytics.counts")
    replayed(stack)
    assert rows(stack.standby, secured) == [(True, True)]
    with api(stack) as conn:
        assert as_caller(conn, "user", "SELECT count(*) FROM analytics.daily_counts") == [(0,)]


def test_a_table_a_migration_creates_is_committed_sealed(stack: CopyStack, tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR / SERVED[0], root / SERVED[0])
    (root / SERVED[0] / "0002_article_days.sql").write_text(
        "CREATE TABLE analytics.article_days (day date PRIMARY KEY, articles bigint);\n"
    )
    plan = plan_migrations(tuple(SETTINGS.domains), root, only=set(SERVED))
    bundle = migrations_bundle(plan, after_each=copy_database.seal_statements(COPY))
    run(stack.primary, write_bundle(bundle, tmp_path / "job"))
    replayed(stack)
    for cluster in (stack.primary, stack.standby):
        secured = rows(
            cluster,
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE oid = 'analytics.article_days'::regclass",
        )
        assert secured == [(True, True)]


def test_applying_again_changes_no_privilege(stack: CopyStack) -> None:
    acl = (
        "SELECT 'n' || nspname, nspacl::text FROM pg_namespace UNION ALL "
        "SELECT 'c' || oid::regclass::text, relacl::text FROM pg_class "
        "WHERE relnamespace <> 'pg_catalog'::regnamespace UNION ALL "
        "SELECT 'd' || defaclrole::regrole || defaclnamespace, defaclacl::text "
        "FROM pg_default_acl UNION ALL "
        "SELECT 'db', datacl::text FROM pg_database WHERE datname = current_database() "
        "ORDER BY 1, 2"
    )
    before = rows(stack.primary, acl)
    run(stack.primary, stack.bundle / APPLY_SCRIPT)
    assert rows(stack.primary, acl) == before


def test_the_advisor_finds_nothing_in_the_served_schema(
    stack: CopyStack, rendered_stack: Callable[[str], Path]
) -> None:
    """The CronJob's second container, as rendered, on the copy database: clean, and only the
    served schema is checked (the copies beside it have no RLS by design)."""
    result = run_cronjob(
        rendered_stack("staging"),
        stack.primary,
        container_name="advisor-analytics",
        admin=(ADMIN, ADMIN_PASSWORD),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["schemas"] == list(SERVED)
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
