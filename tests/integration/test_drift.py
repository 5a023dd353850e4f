"""Drift detection on a real PostgreSQL 15: changes made by hand are named.

The "live" database is the staging stack built the way the expected one is (so there is no
drift to start with); then a column is added by hand, a policy dropped, a grant widened, a
function replaced and a migration's ledger row lost, and ``tools.drift`` names each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.pg import PgCluster, running_cluster
from tools.drift import drift, main
from tools.migrate_db import build_copy_database, build_stack_database, stack_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def build(rendered_stack: Callable[[str], Path]) -> Path:
    return rendered_stack("staging")


@pytest.fixture(scope="module")
def live(build: Path) -> Iterator[tuple[PgCluster, str]]:
    with running_cluster() as cluster:
        dbname = stack_database(build)
        build_stack_database(cluster, dbname, build)
        yield cluster, dbname


def dsn(cluster: PgCluster, dbname: str) -> str:
    return (
        f"host={cluster.socket_dir} port={cluster.port} dbname={dbname}"
        f" user={cluster.superuser} password={cluster.superuser_password}"
    )


def test_drift_by_hand_is_named(live: tuple[PgCluster, str], build: Path) -> None:
    cluster, dbname = live
    assert drift(build, dsn(cluster, dbname)) == [], "a database built like the render"
    with cluster.connect(dbname) as conn:
        conn.execute("ALTER TABLE content.articles ADD COLUMN phone text")
        conn.execute("DROP POLICY articles_cms_own ON content.articles")
        conn.execute("GRANT DELETE ON content.articles TO api_user")
        conn.execute(
            "CREATE OR REPLACE FUNCTION billing.tenant_total() RETURNS bigint"
            " LANGUAGE sql STABLE SET search_path = '' AS $$ SELECT 0::bigint $$"
        )
        conn.execute("DELETE FROM platform.migration WHERE domain = 'billing'")
    found = {(d.kind, d.object): d for d in drift(build, dsn(cluster, dbname))}
    assert set(found) == {
        ("column", "content.articles.phone"),
        ("policy", "content.articles articles_cms_own"),
        ("grant", "relation content.articles to api_user"),
        ("function", "billing.tenant_total()"),
        ("migration", "billing/0001_invoices.sql"),
    }, found
    assert str(found["column", "content.articles.phone"]).startswith(
        "+ column content.articles.phone: not in the migrations (text)"
    )
    assert str(found["policy", "content.articles articles_cms_own"]).startswith(
        "- policy content.articles articles_cms_own: missing (PERMISSIVE ALL to api_service_cms"
    )
    grant = found["grant", "relation content.articles to api_user"]
    assert grant.expected is not None
    assert grant.live is not None
    assert "DELETE" in grant.live
    assert "DELETE" not in grant.expected


def test_the_cli_prints_the_differences_and_fails(
    live: tuple[PgCluster, str], build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, dbname = live
    with cluster.connect(dbname) as conn:
        conn.execute("ALTER TABLE content.articles ADD COLUMN IF NOT EXISTS by_hand int")
    code = main(["--stack", "staging", "--build", str(build), "--dsn", dsn(cluster, dbname)])
    out = capsys.readouterr().out
    assert code == 1
    assert "+ column content.articles.by_hand: not in the migrations (integer)" in out
    assert "difference(s)" in out


def test_drift_in_the_cdc_database_is_named(live: tuple[PgCluster, str], build: Path) -> None:
    """Staging serves analytics from the CDC copies: that database is compared on its own."""
    cluster, _ = live
    copies = build_copy_database(cluster, build)
    assert drift(build, dsn(cluster, copies), copies=True) == [], "built like the render"
    with cluster.connect(copies) as conn:
        conn.execute("GRANT SELECT ON content.articles TO api_service_cms")
        conn.execute("CREATE VIEW analytics.by_hand AS SELECT 1 AS one")
        conn.execute("DELETE FROM platform.migration WHERE domain = 'analytics'")
    found = {(d.kind, d.object) for d in drift(build, dsn(cluster, copies), copies=True)}
    assert found == {
        ("grant", "relation content.articles to api_service_cms"),
        ("relation", "analytics.by_hand"),
        ("column", "analytics.by_hand.one"),
        ("migration", "analytics/0001_article_stats.sql"),
    }, found
