"""Domain migrations on a real PostgreSQL 15, applied by the rendered migrations Job's script.

Each test builds a fresh database from the staging render (platform bundle as superuser, then
``migrate.psql`` of the rendered migrations ConfigMap); variations of ``migrations/`` are
copied to a temporary tree and rendered with the same builder the stack uses. Staging serves
``analytics`` from the CDC copies, so its migrations run in that database, not here
(``tests/integration/test_copy_database.py``).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from components.render.migrations import (
    ADVISORY_LOCK_KEY,
    MIGRATIONS_DIR,
    MigrationError,
    job_bundle,
    plan_migrations,
    write_bundle,
)
from tests.conftest import stack_settings
from tests.integration.pg import PgCluster, running_cluster
from tools.migrate_db import (
    build_stack_database,
    rendered_migrations,
    run_migrations,
    stack_database,
)

pytestmark = pytest.mark.integration

_STAGING = stack_settings("staging")
DOMAINS = tuple(_STAGING.domains)
APP_DOMAINS = tuple(d for d in DOMAINS if d not in _STAGING.copy_domains())
"""The staging domains whose migrations run in the application database."""


@pytest.fixture(scope="module")
def build(rendered_stack: Callable[[str], Path]) -> Path:
    return rendered_stack("staging")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with running_cluster() as pg:
        yield pg


@pytest.fixture
def database(cluster: PgCluster, build: Path) -> str:
    """A fresh stack database with the platform bundle and every committed migration."""
    name = stack_database(build)
    build_stack_database(cluster, name, build)
    return name


def ledger(cluster: PgCluster, dbname: str) -> list[tuple[Any, ...]]:
    with cluster.connect(dbname) as conn:
        return conn.execute(
            "SELECT domain, version, name, checksum, applied_at, applied_by"
            " FROM platform.migration ORDER BY applied_at, domain, version"
        ).fetchall()


def tree(tmp_path: Path) -> Path:
    """A copy of ``migrations/`` to vary."""
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, root)
    return root


def bundle_of(root: Path, tmp_path: Path, **options: str) -> Path:
    """The Job's bundle rendered from ``root`` (the stack's domains), written to a directory."""
    plan = plan_migrations(DOMAINS, root, only=APP_DOMAINS, **options)
    return write_bundle(job_bundle(plan), tmp_path / "bundle").parent


def failed(result: Any) -> str:
    assert result.returncode != 0, result.stdout
    return str(result.stderr)


def test_migrations_apply_in_order_as_the_schema_owner(cluster: PgCluster, database: str) -> None:
    rows = ledger(cluster, database)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("billing", 1, "invoices"),
        ("content", 1, "articles"),
        ("content", 2, "cms_client_policy"),
        ("identity", 1, "accounts"),
    ]
    plan = plan_migrations(DOMAINS, only=APP_DOMAINS)
    assert {(r[0], r[1]): r[3] for r in rows} == {
        (m.domain, m.version): m.checksum for m in plan.migrations
    }
    assert {r[5] for r in rows} == {cluster.superuser}
    with cluster.connect(database) as conn:
        owners = conn.execute(
            "SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner) FROM pg_class c"
            " WHERE c.oid IN ('identity_private.accounts'::regclass,"
            " 'content.articles'::regclass, 'billing.invoices'::regclass)"
        ).fetchall()
        policy = conn.execute(
            "SELECT roles::text[] FROM pg_policies WHERE policyname = 'articles_cms_own'"
        ).fetchone()
    assert {owner for _, owner in owners} == {"pgplatform_owner"}, owners
    assert policy == (["api_service_cms"],)


def test_the_run_masks_what_the_migrations_created(cluster: PgCluster, database: str) -> None:
    """Staging masks identity.accounts.email: after the run the API's name is the masking view."""
    with cluster.connect(database) as conn:
        kinds = conn.execute(
            "SELECT c.oid::regclass::text, c.relkind::text, pg_get_userbyid(c.relowner)"
            " FROM pg_class c WHERE c.oid IN ('identity.accounts'::regclass,"
            " 'identity_private.accounts'::regclass) ORDER BY 1"
        ).fetchall()
    assert kinds == [
        ("identity.accounts", "v", "pgplatform_masking"),
        ("identity_private.accounts", "r", "pgplatform_owner"),
    ]


def test_a_second_run_is_a_no_op(cluster: PgCluster, database: str, build: Path) -> None:
    before = ledger(cluster, database)
    with cluster.connect(database) as conn:
        version = conn.execute(
            "SELECT platform.schema_version('identity', 'content', 'analytics')"
        ).fetchone()
    result = run_migrations(cluster, database, rendered_migrations(build))
    assert result.returncode == 0, result.stderr
    assert "applying" not in result.stdout
    assert "migrations current: 4 in 3 domain(s)" in result.stdout
    assert ledger(cluster, database) == before
    with cluster.connect(database) as conn:
        again = conn.execute(
            "SELECT platform.schema_version('identity', 'content', 'analytics')"
        ).fetchone()
    assert again == version, "a no-op run must not make PostgREST reload"


def test_a_new_migration_is_applied_and_changes_the_schema_version(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    """What makes PostgREST reload: the migration's DDL changes ``platform.schema_version``."""
    root = tree(tmp_path)
    (root / "content" / "0003_nicknames.sql").write_text(
        "ALTER TABLE content.articles ADD COLUMN nickname text;\n"
    )
    with cluster.connect(database) as conn:
        before = conn.execute("SELECT platform.schema_version('content')").fetchone()
    result = run_migrations(cluster, database, bundle_of(root, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "content/0003_nicknames.sql: applied" in result.stdout
    assert result.stdout.count("applying") == 1
    with cluster.connect(database) as conn:
        after = conn.execute("SELECT platform.schema_version('content')").fetchone()
        column = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = 'content' AND column_name = 'nickname'"
        ).fetchone()
    assert column is not None
    assert after != before


def test_an_applied_migration_whose_file_changed_is_refused_by_name(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    edited = root / "content" / "0001_articles.sql"
    edited.write_text(edited.read_text() + "\nCOMMENT ON TABLE content.articles IS 'x';\n")
    (root / "identity" / "0002_later.sql").write_text("CREATE TABLE identity.later (id int);\n")
    before = ledger(cluster, database)
    error = failed(run_migrations(cluster, database, bundle_of(root, tmp_path)))
    assert "migrations refused, nothing applied" in error
    assert "content/0001_articles.sql: changed since it was applied" in error
    assert ledger(cluster, database) == before
    with cluster.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('identity.later')").fetchone() == (None,)


def test_a_gap_in_the_files_is_refused_before_rendering(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "content" / "0004_skipped_three.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"content/0004_skipped_three\.sql: gap: version 0003"):
        plan_migrations(DOMAINS, root)


def test_a_gap_in_the_ledger_is_refused(cluster: PgCluster, database: str, build: Path) -> None:
    """A pending migration older than an applied one (here: its ledger row lost) stops the run."""
    with cluster.connect(database) as conn:
        conn.execute("DELETE FROM platform.migration WHERE domain = 'content' AND version = 1")
    error = failed(run_migrations(cluster, database, rendered_migrations(build)))
    assert "content/0001_articles.sql: not applied, but a later version is (2)" in error


def test_a_reordered_migration_is_refused(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    (root / "content" / "0002_cms_client_policy.sql").rename(
        root / "content" / "0003_cms_client_policy.sql"
    )
    (root / "content" / "0002_inserted.sql").write_text("SELECT 1;\n")
    error = failed(run_migrations(cluster, database, bundle_of(root, tmp_path)))
    assert (
        "content/0002_cms_client_policy.sql: applied as version 2, the bundle has it as "
        "content/0003_cms_client_policy.sql (reordered)"
    ) in error


def test_a_removed_migration_is_refused(cluster: PgCluster, database: str, tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "content" / "0002_cms_client_policy.sql").unlink()
    error = failed(run_migrations(cluster, database, bundle_of(root, tmp_path)))
    assert "content/0002_cms_client_policy.sql: applied, but the bundle has no version 2" in error


def test_a_failing_migration_rolls_back_alone(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    (root / "identity" / "0002_fine.sql").write_text("CREATE TABLE identity.fine (id int);\n")
    broken = root / "identity" / "0003_broken.sql"
    broken.write_text("ALTER TABLE content.articles ADD COLUMN half_done text;\nSELECT 1 / 0;\n")
    (root / "identity" / "0004_after.sql").write_text("CREATE TABLE identity.after (id int);\n")
    error = failed(run_migrations(cluster, database, bundle_of(root, tmp_path)))
    assert "division by zero" in error
    assert "0003_broken.sql" in error  # psql names the file and line
    with cluster.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('identity.fine')").fetchone() != (None,)
        assert conn.execute("SELECT to_regclass('identity.after')").fetchone() == (None,)
        half = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE column_name = 'half_done'"
        ).fetchone()
    assert half is None
    assert [r[1] for r in ledger(cluster, database) if r[0] == "identity"] == [1, 2]
    # Fixed (it was never applied, so it may still change): the next run goes on from there.
    broken.write_text("ALTER TABLE content.articles ADD COLUMN half_done text;\n")
    result = run_migrations(cluster, database, bundle_of(root, tmp_path / "fixed"))
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in ledger(cluster, database) if r[0] == "identity"] == [1, 2, 3, 4]


def test_a_migration_waits_for_locks_only_up_to_its_lock_timeout(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    (root / "content" / "0003_flag.sql").write_text(
        "ALTER TABLE content.articles ADD COLUMN flagged boolean;\n"
    )
    bundle = bundle_of(root, tmp_path, lock_timeout="1s")
    with cluster.connect(database, autocommit=False) as api:
        api.execute("SELECT count(*) FROM content.articles")  # an API transaction, still open
        started = time.monotonic()
        error = failed(run_migrations(cluster, database, bundle))
        waited = time.monotonic() - started
        api.rollback()
    assert "lock timeout" in error
    assert waited < 30
    assert [r[1] for r in ledger(cluster, database) if r[0] == "content"] == [1, 2]
    assert run_migrations(cluster, database, bundle).returncode == 0


def test_two_runners_do_not_race(cluster: PgCluster, database: str, tmp_path: Path) -> None:
    """The advisory lock: a second runner waits for the first, then finds nothing to do."""
    root = tree(tmp_path)
    (root / "identity" / "0002_slow.sql").write_text(
        "SELECT pg_sleep(1.5);\nCREATE TABLE identity.slow (id int);\n"
    )
    bundle = bundle_of(root, tmp_path)
    results: list[Any] = []
    runners = [
        threading.Thread(target=lambda: results.append(run_migrations(cluster, database, bundle)))
        for _ in range(2)
    ]
    for runner in runners:
        runner.start()
        time.sleep(0.3)
    for runner in runners:
        runner.join(timeout=60)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert sum(r.stdout.count("identity/0002_slow.sql: applied") for r in results) == 1


def test_a_runner_gives_up_when_another_holds_the_lock_too_long(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    bundle = bundle_of(tree(tmp_path), tmp_path, lock_wait="1s")
    with cluster.connect(database) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        error = failed(run_migrations(cluster, database, bundle))
    assert "lock timeout" in error


def test_neither_the_apis_nor_the_migrations_touch_the_ledger(
    cluster: PgCluster, database: str
) -> None:
    """Only the database owner writes history: the schema owner cannot rewrite its own."""
    with cluster.connect(database) as conn:
        readers = conn.execute(
            "SELECT r.rolname FROM pg_roles r"
            " WHERE (r.rolname LIKE 'api%' OR r.rolname IN ('postgrest', 'pgplatform_owner'))"
            " AND (has_table_privilege(r.oid, 'platform.migration', 'SELECT')"
            "      OR has_table_privilege(r.oid, 'platform.migration', 'INSERT,UPDATE,DELETE'))"
        ).fetchall()
    assert readers == []


def test_a_concurrent_index_needs_a_no_transaction_migration(
    cluster: PgCluster, database: str, tmp_path: Path
) -> None:
    index = (
        "SET lock_timeout = '10s';\nSET statement_timeout = '60s';\n"
        "DROP INDEX CONCURRENTLY IF EXISTS content.articles_title_idx;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS articles_title_idx ON content.articles (title);\n"
    )
    root = tree(tmp_path)
    (root / "content" / "0003_title_index.sql").write_text(index)
    error = failed(run_migrations(cluster, database, bundle_of(root, tmp_path / "in")))
    assert "cannot run inside a transaction block" in error
    assert [r[1] for r in ledger(cluster, database) if r[0] == "content"] == [1, 2]
    (root / "content" / "0003_title_index.sql").write_text(
        "-- pgplatform: no-transaction\n" + index
    )
    result = run_migrations(cluster, database, bundle_of(root, tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "content/0003_title_index.sql: applying (no transaction)" in result.stdout
    with cluster.connect(database) as conn:
        valid = conn.execute(
            "SELECT i.indisvalid, pg_get_userbyid(c.relowner) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indexrelid = 'content.articles_title_idx'::regclass"
        ).fetchone()
        role = conn.execute("SELECT current_user").fetchone()
    assert valid == (True, "pgplatform_owner")
    assert role == (cluster.superuser,)
    assert [r[1] for r in ledger(cluster, database) if r[0] == "content"] == [1, 2, 3]
