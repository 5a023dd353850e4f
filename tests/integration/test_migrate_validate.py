"""``make migrate-validate`` refuses what an API must never serve, on a real PostgreSQL 15.

The committed migrations pass (the make target runs them for both stacks); here a copy of the
staging render carries a bundle from a varied ``migrations/`` tree, and the check names each
problem.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from components.cdc_pipeline import copy_database_input
from components.render.catalog import VALIDATE_SQL
from components.render.copy_database import seal_statements
from components.render.migrations import MIGRATIONS_DIR, job_bundle, plan_migrations, write_bundle
from tests.conftest import stack_settings
from tests.integration.pg import PgCluster, running_cluster
from tools.migrate_db import (
    COPIES_MIGRATIONS_GLOB,
    MIGRATIONS_CONFIGMAP_GLOB,
    build_stack_database,
    rendered_config_map,
    rendered_migrations,
    stack_database,
)
from tools.migrate_validate import validate_build

pytestmark = pytest.mark.integration

DOMAINS = ("identity", "content", "analytics", "billing")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with running_cluster() as pg:
        yield pg


@pytest.fixture
def build_with(
    rendered_stack: Callable[[str], Path], tmp_path: Path
) -> Callable[[dict[str, str]], Path]:
    """A copy of the staging render whose migrations bundle has ``extra`` files added."""

    def make(extra: dict[str, str]) -> Path:
        source = rendered_stack("staging")
        build = tmp_path / "build"
        shutil.copytree(source / "sql", build / "sql")
        root = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS_DIR, root)
        for name, text in extra.items():
            (root / name).write_text(text)
        bundle_dir = build / "files" / MIGRATIONS_CONFIGMAP_GLOB.replace("*", "test")
        write_bundle(job_bundle(plan_migrations(DOMAINS, root)), bundle_dir)
        assert rendered_migrations(build) == bundle_dir
        return build

    return make


def test_the_committed_migrations_pass(
    cluster: PgCluster, rendered_stack: Callable[[str], Path]
) -> None:
    assert validate_build(cluster, rendered_stack("staging")) == []


def test_a_table_without_a_policy_is_named(
    cluster: PgCluster, build_with: Callable[[dict[str, str]], Path]
) -> None:
    build = build_with({"identity/0002_notes.sql": "CREATE TABLE identity.notes (id bigint);\n"})
    assert validate_build(cluster, build) == [
        "identity.notes: no policy (an API role would see no rows)"
    ]


def test_a_policy_without_roles_is_named(
    cluster: PgCluster, build_with: Callable[[dict[str, str]], Path]
) -> None:
    build = build_with(
        {
            "content/0003_open.sql": (
                "CREATE POLICY articles_everyone ON content.articles FOR SELECT USING (true);\n"
            )
        }
    )
    assert validate_build(cluster, build) == [
        "content.articles: policy articles_everyone names no role (write TO <role>, ...)"
    ]


def test_a_policy_for_every_role_passes_when_its_comment_says_so(
    cluster: PgCluster, build_with: Callable[[dict[str, str]], Path]
) -> None:
    """The tenant filter of billing binds every role on purpose, acknowledged like the advisor's."""
    build = build_with(
        {
            "content/0003_open.sql": (
                "CREATE POLICY articles_everyone ON content.articles FOR SELECT USING (true);\n"
                "COMMENT ON POLICY articles_everyone ON content.articles IS\n"
                "    'Everyone reads. advisor: allow with_check_true, policy_to_public';\n"
            )
        }
    )
    assert validate_build(cluster, build) == []


def test_row_level_security_switched_off_is_named(
    cluster: PgCluster, rendered_stack: Callable[[str], Path]
) -> None:
    """The RLS guard re-forces RLS on every ALTER TABLE; without it, the check still catches it."""
    build = rendered_stack("staging")
    dbname = stack_database(build)
    build_stack_database(cluster, dbname, build)
    with cluster.connect(dbname) as conn:
        conn.execute("ALTER TABLE content.articles NO FORCE ROW LEVEL SECURITY")
        assert conn.execute(VALIDATE_SQL).fetchall() == [], "the guard forces it again"
        conn.execute("ALTER EVENT TRIGGER platform_rls_guard DISABLE")
        conn.execute("ALTER TABLE content.articles NO FORCE ROW LEVEL SECURITY")
        # A masked table sits in <schema>_private behind its view: checked there too.
        conn.execute("ALTER TABLE identity_private.accounts NO FORCE ROW LEVEL SECURITY")
        assert conn.execute(VALIDATE_SQL).fetchall() == [
            ("content.articles: row-level security is not forced",),
            ("identity_private.accounts: row-level security is not forced",),
        ]


def test_a_migration_that_does_not_apply_is_reported(
    cluster: PgCluster, build_with: Callable[[dict[str, str]], Path]
) -> None:
    build = build_with({"identity/0002_typo.sql": "ALTER TABLE identity.acounts ADD x int;\n"})
    (problem,) = validate_build(cluster, build)
    assert problem.startswith("the migrations do not apply")
    assert "identity.0002_typo.sql" in problem


def test_an_analytics_view_reading_an_uncopied_column_is_named(
    cluster: PgCluster, rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    """Staging's analytics migrations run in the CDC database, where only the copied columns
    exist: a view on a column the publication leaves out applies at home but not there."""
    build = tmp_path / "build"
    shutil.copytree(rendered_stack("staging"), build)
    bundle_dir = rendered_config_map(build, COPIES_MIGRATIONS_GLOB)
    shutil.rmtree(bundle_dir)
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, root)
    (root / "analytics" / "0002_authors.sql").write_text(
        "-- requires: content\n"
        "CREATE VIEW analytics.authors WITH (security_invoker = true) AS\n"
        "SELECT DISTINCT a.author_sub FROM content.articles a;\n"
    )
    settings = stack_settings("staging")
    plan = plan_migrations(tuple(settings.domains), root, only=settings.copy_domains())
    seal = seal_statements(copy_database_input(settings))
    write_bundle(job_bundle(plan, after_each=seal), bundle_dir)
    [problem] = validate_build(cluster, build)
    assert problem.startswith("the CDC database's setup or migrations do not apply")
    assert "column a.author_sub does not exist" in problem
