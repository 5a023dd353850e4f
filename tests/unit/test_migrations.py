"""The migration files and the runner's script, checked without a database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.render.catalog import Difference, diff
from components.render.migrations import (
    ADVISORY_LOCK_KEY,
    MIGRATIONS_DIR,
    SCRIPT,
    MigrationError,
    job_bundle,
    plan_migrations,
    read_domain,
    render_migrate_script,
)
from components.settings import SettingsError, parse_settings
from tests.conftest import stack_config

pytestmark = pytest.mark.unit

DOMAINS = ("identity", "content", "analytics", "billing")


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "migrations"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_example_domains_are_the_first_migrations() -> None:
    plan = plan_migrations(DOMAINS)
    assert [m.label for m in plan.migrations] == [
        "billing/0001_invoices.sql",
        "content/0001_articles.sql",
        "content/0002_cms_client_policy.sql",
        "analytics/0001_article_stats.sql",
        "identity/0001_accounts.sql",
    ]
    for migration in plan.migrations:
        assert "SET ROLE" not in migration.text, "the runner sets the schema owner"


def test_a_domain_that_reads_another_comes_after_it(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "aa/0001_x.sql": "-- requires: zz\nCREATE VIEW aa.v AS SELECT * FROM zz.t;\n",
            "zz/0001_t.sql": "CREATE TABLE zz.t (id bigint);\n",
        },
    )
    assert plan_migrations(("aa", "zz"), root).domains == ("zz", "aa")


def test_requiring_an_unconfigured_domain_or_a_cycle_is_refused(tmp_path: Path) -> None:
    root = tree(tmp_path, {"aa/0001_x.sql": "-- requires: billing\nSELECT 1;\n"})
    with pytest.raises(MigrationError, match=r"aa/0001_x\.sql: requires domain 'billing'"):
        plan_migrations(("aa",), root)
    cycle = tree(
        tmp_path / "c",
        {"aa/0001_x.sql": "-- requires: bb\nSELECT 1;\n", "bb/0001_y.sql": "-- requires: aa\n;"},
    )
    with pytest.raises(MigrationError, match="cycle"):
        plan_migrations(("aa", "bb"), cycle)


def test_only_the_stack_domains_are_applied(tmp_path: Path) -> None:
    plan = plan_migrations(("identity",))
    assert plan.domains == ("identity",)
    assert {m.domain for m in plan.migrations} == {"identity"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("1_short.sql", "SELECT 1;", r"a/1_short\.sql: migrations are files named NNNN_<name>"),
        ("0001_Upper.sql", "SELECT 1;", r"a/0001_Upper\.sql: migrations are files named"),
        ("0000_zero.sql", "SELECT 1;", r"a/0000_zero\.sql: versions start at 0001"),
        ("0001_empty.sql", "  \n", r"a/0001_empty\.sql: empty file"),
        ("0001_tx.sql", "BEGIN;\nSELECT 1;\nCOMMIT;\n", r"a/0001_tx\.sql: BEGIN found"),
        ("0001_commit.sql", "SELECT 1;\ncommit;\n", r"a/0001_commit\.sql: COMMIT found"),
        ("0001_meta.sql", "SELECT 1;\n\\i /etc/passwd\n", r"a/0001_meta\.sql:2: psql meta"),
        ("0001_shell.sql", "\\! rm -rf /\n", r"a/0001_shell\.sql:1: psql meta-command"),
    ],
)
def test_bad_files_are_refused_by_name(tmp_path: Path, name: str, text: str, message: str) -> None:
    root = tree(tmp_path, {f"a/{name}": text})
    with pytest.raises(MigrationError, match=message):
        read_domain("a", root / "a")


def test_plpgsql_blocks_are_not_transaction_control(tmp_path: Path) -> None:
    text = (
        "CREATE FUNCTION a.f() RETURNS void LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n    PERFORM 1;\nEND;\n$body$;\n"
        "DO $$\nBEGIN\n    PERFORM 1;\nEND\n$$;\n"
        "-- a comment saying COMMIT; is fine\n"
    )
    root = tree(tmp_path, {"a/0001_f.sql": text})
    assert [m.name for m in read_domain("a", root / "a")] == ["f"]


def test_duplicate_versions_and_gaps_are_refused(tmp_path: Path) -> None:
    root = tree(tmp_path, {"a/0001_x.sql": "SELECT 1;", "a/0001_y.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match=r"a/0001_y\.sql: version 0001 is taken by a/0001_x"):
        read_domain("a", root / "a")
    gap = tree(tmp_path / "g", {"a/0001_x.sql": "SELECT 1;", "a/0003_z.sql": "SELECT 3;"})
    with pytest.raises(MigrationError, match=r"a/0003_z\.sql: gap: version 0002 of a is missing"):
        read_domain("a", gap / "a")


def test_the_script_locks_checks_then_applies_each_in_its_own_transaction() -> None:
    plan = plan_migrations(DOMAINS)
    script = render_migrate_script(plan)
    lock = script.index(f"pg_advisory_lock({ADVISORY_LOCK_KEY})")
    check = script.index("DO $ledger_check$")
    first = script.index("\\ir content.0001_articles.sql")
    assert lock < check < first
    # One transaction per migration, and one for the masking rules after a run that applied any.
    assert script.count("BEGIN;") == script.count("COMMIT;") == len(plan.migrations) + 1
    assert script.index("SELECT platform.apply_masking()") > script.rindex("\\ir ")
    assert script.count('SET LOCAL ROLE "pgplatform_owner";') == len(plan.migrations)
    assert script.count("SET LOCAL lock_timeout = '10s';") == len(plan.migrations) + 1
    assert script.count("SET LOCAL statement_timeout = '15min';") == len(plan.migrations) + 1
    for migration in plan.migrations:
        assert migration.checksum in script
    assert script.startswith("-- Domain migrations")
    assert "\\set ON_ERROR_STOP on" in script


def test_the_bundle_and_its_name_change_with_any_file(tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, root)
    before = job_bundle(plan_migrations(DOMAINS, root))
    path = root / "identity" / "0001_accounts.sql"
    path.write_text(path.read_text() + "\n")
    after = job_bundle(plan_migrations(DOMAINS, root))
    assert before[SCRIPT] != after[SCRIPT]  # it carries the checksums
    assert set(before) == set(after)


def test_a_bad_migration_is_a_settings_error_naming_domains(tmp_path: Path) -> None:
    config, secrets = stack_config("staging")
    from components.settings import decode_config_value

    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["domains"] = {**raw["domains"], "orders": {}}
    settings = parse_settings("staging", raw, [s.split(":", 1)[1] for s in secrets])
    assert "orders" in settings.domains  # no migrations directory: nothing to apply
    del raw["domains"]["content"]
    with pytest.raises(SettingsError) as error:
        parse_settings("staging", raw, [s.split(":", 1)[1] for s in secrets])
    assert "analytics/0001_article_stats.sql: requires domain 'content'" in str(error.value)
    assert "domains" in str(error.value)


def test_catalog_diff_names_missing_unexpected_and_changed_rows() -> None:
    expected = [("column", "a.t.x", "text"), ("policy", "a.t p", "to api_user")]
    live = [("column", "a.t.x", "integer"), ("column", "a.t.y", "text")]
    found = diff(expected, live)
    assert found == [
        Difference("column", "a.t.x", "text", "integer"),
        Difference("column", "a.t.y", None, "text"),
        Difference("policy", "a.t p", "to api_user", None),
    ]
    assert [str(d)[:1] for d in found] == ["~", "+", "-"]
    assert diff(expected, expected) == []
