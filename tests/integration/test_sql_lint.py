"""The SQL lint (``make sql-lint``) on the repository and on planted migrations.

squawk and sqlfluff come from requirements-dev.txt and run for real. A planted migration under
``migrations/<domain>/`` of a scratch tree must fail for the reason the rule exists, and its
safe rewrite must pass, so the lint neither misses the directory nor fails on everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from components.render.baseline import (
    ACCESS_FILE,
    BASELINE_LOCK_TIMEOUT,
    BASELINE_STATEMENT_TIMEOUT,
    render_apply_script,
)
from tests.conftest import STACKS
from tools import sql_lint

pytestmark = pytest.mark.integration

TIMEOUTS = "SET lock_timeout = '10s';\nSET statement_timeout = '60s';\n"
SAFE_TABLE = TIMEOUTS + "CREATE TABLE IF NOT EXISTS content.notes (id bigint PRIMARY KEY);\n"

# (rule squawk must name, a migration breaking it, its safe rewrite)
CASES = {
    "index-without-concurrently": (
        "require-concurrent-index-creation",
        TIMEOUTS + "CREATE INDEX IF NOT EXISTS articles_title_idx ON content.articles (title);\n",
        # CONCURRENTLY cannot run in the transaction the migrations runner opens: opt out.
        "-- pgplatform: no-transaction\n"
        + TIMEOUTS
        + "CREATE INDEX CONCURRENTLY IF NOT EXISTS articles_title_idx"
        + " ON content.articles (title);\n",
    ),
    "required-column": (
        "adding-required-field",
        TIMEOUTS + "ALTER TABLE content.articles ADD COLUMN IF NOT EXISTS slug text NOT NULL;\n",
        TIMEOUTS
        + "ALTER TABLE content.articles ADD COLUMN IF NOT EXISTS slug text NOT NULL DEFAULT '';\n",
    ),
    "missing-lock-timeout": (
        "require-lock-timeout",
        "SET statement_timeout = '60s';\n"
        + "ALTER TABLE content.articles ADD COLUMN IF NOT EXISTS slug text;\n",
        TIMEOUTS + "ALTER TABLE content.articles ADD COLUMN IF NOT EXISTS slug text;\n",
    ),
    "validated-constraint": (
        "constraint-missing-not-valid",
        TIMEOUTS
        + "ALTER TABLE content.articles ADD CONSTRAINT articles_title_set"
        + " CHECK (title <> '');\n",
        # The runner's transaction: a rerun after a failure finds nothing half done.
        TIMEOUTS
        + "ALTER TABLE content.articles ADD CONSTRAINT articles_title_set"
        + " CHECK (title <> '') NOT VALID;\n",
    ),
}


def _tree(tmp_path: Path, migration: str) -> Path:
    """A scratch repository holding one migration of the ``content`` domain."""
    path = tmp_path / "migrations" / "content" / "0002_change.sql"
    path.parent.mkdir(parents=True)
    path.write_text(migration)
    return tmp_path


def test_repository_sql_passes(
    rendered_stack: Callable[[str], Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """Every committed SQL file and both stacks' rendered bundles pass (``make sql-lint``)."""
    rendered = [path for stack in STACKS for path in (rendered_stack(stack) / "sql").glob("*.sql")]
    assert any(path.name == ACCESS_FILE for path in rendered)
    assert sql_lint.lint(rendered=rendered) == 0, capfd.readouterr().out


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsafe_migration_fails(
    case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rule, unsafe, _ = CASES[case]
    assert sql_lint.lint(_tree(tmp_path, unsafe)) == 1
    out = capfd.readouterr().out
    assert re.search(rf"migrations/content/0002_change\.sql:\d+:\d+: \w+: {rule} ", out), out


@pytest.mark.parametrize("case", sorted(CASES))
def test_safe_rewrite_passes(case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _, _, safe = CASES[case]
    assert sql_lint.lint(_tree(tmp_path, safe)) == 0, capfd.readouterr().out


def test_inline_exception_is_honoured(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``-- squawk-ignore <rule>`` on the line before waives that rule for that statement only."""
    _, unsafe, _ = CASES["index-without-concurrently"]
    waived = unsafe.replace("CREATE INDEX", "-- squawk-ignore require-concurrent-index-creation\n"
                            "CREATE INDEX")  # fmt: skip
    root = _tree(tmp_path, waived + unsafe.replace(TIMEOUTS, "").replace("title_idx", "t2_idx"))
    assert sql_lint.lint(root) == 1
    out = capfd.readouterr().out
    assert len(re.findall("require-concurrent-index-creation", out)) == 1, out


def test_format_check_catches_layout(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """sqlfluff: lower-case keywords and stray spaces fail; ``--fix`` rewrites them to pass."""
    root = _tree(tmp_path, SAFE_TABLE.replace("CREATE TABLE", "create table").replace(" (", "  ("))
    assert sql_lint.lint(root) == 1
    out = capfd.readouterr().out
    assert "CP01" in out, out
    assert "LT01" in out, out
    assert sql_lint.lint(root, fix=True) == 0
    fixed = (root / "migrations" / "content" / "0002_change.sql").read_text()
    assert fixed == SAFE_TABLE


def test_apply_script_sets_the_timeouts_the_baseline_files_rely_on() -> None:
    """db/*.sql waive squawk's timeout rules because apply.psql sets both before any file."""
    script = render_apply_script(["content"])
    first_file = script.index("\\ir ")
    for setting, value in (
        ("lock_timeout", BASELINE_LOCK_TIMEOUT),
        ("statement_timeout", BASELINE_STATEMENT_TIMEOUT),
    ):
        assert script.index(f"SET LOCAL {setting} = '{value}';") < first_file
    for path in sql_lint.source_files():
        if path.parent.name == "db" and "squawk-ignore-file" in path.read_text():
            assert "apply.psql sets both" in path.read_text(), path
