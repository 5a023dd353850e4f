"""The advisor against real PostgreSQL 15: every planted finding is reported, the platform's
own example domains come out clean, and it still runs (and says what it skipped) without
hypopg, pg_qualstats, plpgsql_check and pg_stat_statements in the database.

The planted database (``data/advisor_planted.sql``) has its own roles, so it shares a cluster
with the rendered bundle. The cluster preloads pg_stat_statements and pg_qualstats (sampling
every statement) as a cluster configured for the advisor does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from psycopg.conninfo import make_conninfo

from components.render.advisor_job import READ_ONLY_OPTIONS
from tests.conftest import ROOT, STACKS
from tests.integration.pg import PG_PACKAGE, PgCluster, running_cluster
from tests.integration.pooler import prepare_database
from tests.tooling import in_ci
from tools.advisor.__main__ import advise

pytestmark = pytest.mark.integration

PLANTED: Final = Path(__file__).parent / "data" / "advisor_planted.sql"
EXTENSIONS: Final = {
    "hypopg": "postgresql-15-hypopg",
    "pg_qualstats": "postgresql-15-pg-qualstats",
    "plpgsql_check": "postgresql-15-plpgsql-check",
    "pg_stat_statements": PG_PACKAGE,
}
HEAVY: Final = "SELECT id, status FROM shop.orders WHERE reference = %s"
# (check, object) of every planted finding: the report must hold exactly these.
PLANTED_FINDINGS: Final = {
    ("rls_per_row_claim", "policy orders_own on shop.orders"),
    ("rls_per_row_claim", "policy orders_hidden on shop.orders"),
    ("rls_per_row_claim", "policy customers_own on shop.customers"),
    ("rls_disabled", "table shop.coupons"),
    ("rls_no_policy", "table shop.notes"),
    ("policy_overlap", "table shop.orders policies orders_hidden, orders_own"),
    ("policy_to_public", "policy orders_insert on shop.orders"),
    ("with_check_true", "policy orders_insert on shop.orders"),
    ("fk_unindexed", "foreign key orders_customer_id_fkey on shop.orders (customer_id)"),
    ("policy_column_unindexed", "column shop.orders.owner_sub"),
    ("index_advice", "table shop.orders (reference)"),
    ("definer_search_path", "function shop.close_order(order_id bigint)"),
    ("dynamic_sql", "function shop.search_orders(filter text)"),
    ("plpgsql_check", "function shop.search_orders(filter text)"),
}


def require_extensions() -> None:
    missing = [
        package
        for name, package in EXTENSIONS.items()
        if not Path(f"/usr/share/postgresql/15/extension/{name}.control").is_file()
    ]
    if missing:
        message = f"PostgreSQL extensions missing: install {', '.join(sorted(set(missing)))}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    require_extensions()
    settings = {
        "shared_preload_libraries": "'pg_stat_statements,pg_qualstats'",
        "pg_qualstats.sample_rate": "1",
    }
    with running_cluster(settings=settings) as pg:
        yield pg


def dsn(pg: PgCluster, database: str) -> str:
    return make_conninfo(
        host=str(pg.socket_dir),
        port=pg.port,
        user=pg.superuser,
        password=pg.superuser_password,
        dbname=database,
    )


def planted(pg: PgCluster, name: str, *, extensions: bool = True) -> str:
    """A database with the planted SQL and, after ``extensions``, a heavy statement run."""
    database = pg.create_database(name)
    created = [f"CREATE EXTENSION {e}" for e in EXTENSIONS] if extensions else []
    pg.apply_sql(
        database, [(f"{n}.sql", n) for n in created] + [(PLANTED.name, PLANTED.read_text())]
    )
    with pg.connect(database) as conn:
        for i in range(30):
            conn.execute(HEAVY, (f"ref-{i}",)).fetchall()
    return database


def run(pg: PgCluster, database: str, *schemas: str, authenticator: str = "seed_authenticator"):
    return advise(dsn(pg, database), list(schemas) or None, authenticator, 10)


@pytest.fixture(scope="module")
def planted_db(cluster: PgCluster) -> str:
    return planted(cluster, "planted")


def test_every_planted_finding_is_reported(cluster: PgCluster, planted_db: str) -> None:
    report = run(cluster, planted_db, "shop")
    assert {(f.check, f.object) for f in report.findings} == PLANTED_FINDINGS
    assert report.skipped == []
    assert report.api_roles == ["seed_reader", "seed_writer"]


def test_per_row_claims_are_confirmed_by_explain(cluster: PgCluster, planted_db: str) -> None:
    report = run(cluster, planted_db, "shop")
    per_row = {f.object: f for f in report.findings if f.check == "rls_per_row_claim"}
    for finding in per_row.values():
        assert finding.evidence.startswith("EXPLAIN SELECT"), finding.evidence
        assert "Seq Scan Filter:" in finding.evidence
    hidden = per_row["policy orders_hidden on shop.orders"]
    # The claim read two functions deep, named with the path that reaches it.
    assert (
        "shop.current_customer() -> shop.customer_claim() -> claims.sub() -> "
        "current_setting('request.jwt.claims')" in hidden.why
    )
    assert "shop.current_customer()" in hidden.evidence


def test_the_fixes_clear_their_findings(cluster: PgCluster) -> None:
    database = planted(cluster, "planted_fixed")
    report = run(cluster, database, "shop")
    runnable = {"rls_per_row_claim", "fk_unindexed", "policy_column_unindexed", "index_advice"}
    runnable |= {"definer_search_path"}
    fixes = [f.fix for f in report.findings if f.check in runnable]
    with cluster.connect(database) as conn:
        for fix in fixes:
            conn.execute(fix.encode())
    after = run(cluster, database, "shop")
    assert {f.check for f in after.findings} & runnable == set(), "\n".join(after.summary())
    # The plan now reads the claims once, in an init plan.
    with cluster.connect(database) as conn, conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE seed_reader")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT * FROM shop.orders").fetchall())
    assert "InitPlan" in plan
    assert "claims.sub()" not in plan.split("InitPlan")[0]


def test_an_object_comment_acknowledges_a_finding(cluster: PgCluster) -> None:
    database = planted(cluster, "planted_ack", extensions=False)
    with cluster.connect(database) as conn:
        conn.execute(
            "COMMENT ON POLICY orders_insert ON shop.orders IS "
            "'Inserts are checked by a trigger. advisor: allow with_check_true'"
        )
    report = run(cluster, database, "shop")
    assert [(f.check, f.object) for f, _ in report.acknowledged] == [
        ("with_check_true", "policy orders_insert on shop.orders")
    ]
    assert ("policy_to_public", "policy orders_insert on shop.orders") in {
        (f.check, f.object) for f in report.findings
    }


def test_without_the_platform_registry_the_granted_schemas_are_exposed(
    cluster: PgCluster, planted_db: str
) -> None:
    # No platform.exposed_schema here: the schemas granted to an API role (not public, whose
    # USAGE comes from PUBLIC) are the ones checked.
    assert run(cluster, planted_db).schemas == ["claims", "shop"]


def test_without_the_extensions_the_rest_runs_and_the_skips_are_named(
    cluster: PgCluster,
) -> None:
    database = planted(cluster, "planted_bare", extensions=False)
    report = run(cluster, database, "shop")
    expected = {
        item for item in PLANTED_FINDINGS if item[0] not in {"index_advice", "plpgsql_check"}
    }
    assert {(f.check, f.object) for f in report.findings} == expected
    reasons = {(s.check, s.reason) for s in report.skipped}
    assert (
        "index_advice",
        "extension pg_stat_statements is not installed (available on the server: "
        "CREATE EXTENSION pg_stat_statements; in database planted_bare)",
    ) in reasons
    assert any(c == "plpgsql_check" and "plpgsql_check" in r for c, r in reasons)


@pytest.mark.parametrize("stack", STACKS)
def test_the_platform_example_domains_come_out_clean(
    stack: str, rendered_stack: Callable[[str], Path]
) -> None:
    require_extensions()
    settings = {
        "shared_preload_libraries": "'pg_stat_statements,pg_qualstats'",
        "pg_qualstats.sample_rate": "1",
    }
    with running_cluster(settings=settings) as pg:
        database = prepare_database(pg, rendered_stack(stack))
        pg.apply_sql(database, [(e, f"CREATE EXTENSION {e}") for e in EXTENSIONS])
        with pg.connect(database) as conn:
            for i in range(30):
                conn.execute(
                    "SELECT id, title FROM content.articles WHERE author_sub = %s", (f"s{i}",)
                ).fetchall()
        report = run(pg, database, authenticator="postgrest")
    # Staging masks identity.accounts.email: the table lives in identity_private (docs/masking.md).
    private = ["identity_private"] if stack == "staging" else []
    assert report.schemas == ["analytics", "billing", "content", "identity", *private]
    assert report.findings == [], "\n".join(report.summary())
    assert report.skipped == []
    accounts = "identity_private.accounts" if private else "identity.accounts"
    assert sorted(f.object for f, _ in report.acknowledged) == [
        f"policy accounts_admin on {accounts}",
        "policy articles_admin on content.articles",
        "policy invoices_tenant on billing.invoices",
    ]


def test_the_command_line_writes_json_and_the_summary(
    cluster: PgCluster, planted_db: str, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "tools.advisor", "--dsn", dsn(cluster, planted_db)]
    argv += ["--schema", "shop", "--authenticator", "seed_authenticator"]
    result = subprocess.run(
        [*argv, "--json", str(out), "--fail-on", "error"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == (
        f"advisor: database {planted_db}: 14 findings (error=4 warning=9 info=1), "
        "0 acknowledged, 0 checks skipped"
    )
    assert any(line.startswith("ERROR rls_disabled table shop.coupons: ") for line in lines)
    report = json.loads(out.read_text())
    assert report["counts"]["rls_per_row_claim"] == 3
    assert {f["check"] for f in report["findings"]} == {c for c, _ in PLANTED_FINDINGS}
    assert all(f["object"] and f["why"] and f["fix"] for f in report["findings"])
    bad = subprocess.run(
        [sys.executable, "-m", "tools.advisor", "--dsn", "host=/nonexistent port=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("advisor: cannot connect: ")


def test_every_check_runs_in_the_read_only_session_of_the_job(cluster: PgCluster) -> None:
    """The scheduled Job's session is read-only (``PGOPTIONS``): every check still runs there."""
    database = planted(cluster, "planted_read_only")
    env = {"PGOPTIONS": READ_ONLY_OPTIONS, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    command = ["--dsn", dsn(cluster, database), "--json", "-", "--schema", "shop"]
    result = subprocess.run(
        [sys.executable, "-m", "tools.advisor", *command, "--authenticator", "seed_authenticator"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped"] == []
    assert {(f["check"], f["object"]) for f in report["findings"]} == PLANTED_FINDINGS
