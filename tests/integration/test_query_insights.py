"""The Cluster's auto_explain and pg_stat_statements parameters, on a real PostgreSQL 15.

Each stack's rendered ``.spec.postgresql.parameters`` (those of the two extensions) go into a
throw-away server that preloads both libraries, as CloudNativePG does once such a parameter is
set. The server must accept every value, a statement slower than the stack's
``autoExplainMinDuration`` must leave its plan in the server log, a faster one must not, and
pg_stat_statements must count statements inside functions (``track = all``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import STACKS
from tests.integration.pg import running_cluster

pytestmark = pytest.mark.integration

PREFIXES = ("auto_explain.", "pg_stat_statements.")


def rendered_parameters(build: Path) -> dict[str, str]:
    cluster = yaml.safe_load((build / "manifests" / "cluster_postgres-db.yaml").read_text())
    parameters = cluster["spec"]["postgresql"]["parameters"]
    return {k: str(v) for k, v in parameters.items() if k.startswith(PREFIXES)}


def wait_for(log: Callable[[], str], needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log()
        if needle in text:
            return text
        time.sleep(0.1)
    return log()


@pytest.mark.parametrize("stack", STACKS)
def test_slow_plans_reach_the_log_with_the_rendered_settings(
    stack: str, rendered_stack: Callable[[str], Path]
) -> None:
    rendered = rendered_parameters(rendered_stack(stack))
    assert {"auto_explain.log_min_duration", "pg_stat_statements.track"} <= set(rendered)
    quoted = {k: "'" + v.replace("'", "''") + "'" for k, v in rendered.items()}
    settings = {"shared_preload_libraries": "'pg_stat_statements,auto_explain'", **quoted}
    with running_cluster(settings=settings) as pg:
        threshold_ms = int(rendered["auto_explain.log_min_duration"].removesuffix("ms"))
        with pg.connect() as conn:
            # The server took every value (a bad one would have stopped it from starting).
            shown = conn.execute(
                "SELECT setting FROM pg_settings WHERE name = 'auto_explain.log_min_duration'"
            ).fetchone()
            assert shown == (str(threshold_ms),)
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute(
                "CREATE FUNCTION slow_inner() RETURNS void LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(%s); END $$" % ((threshold_ms + 150) / 1000)
            )
            conn.execute("SELECT pg_sleep(0.01) AS fast_statement")
            conn.execute("SELECT slow_inner() AS slow_statement")
            nested = conn.execute(
                "SELECT count(*) FROM pg_stat_statements "
                "WHERE NOT toplevel AND query ~ 'pg_sleep\\(\\$1\\)'"
            ).fetchone()
        log = wait_for(pg.server_log, "slow_statement")
    assert "plan:" in log
    assert "Query Text: SELECT slow_inner() AS slow_statement" in log
    # The nested statement's own plan is logged too (log_nested_statements).
    assert "Query Text: SELECT pg_sleep(" in log
    assert "fast_statement" not in log
    # track = all: the PERFORM inside the function is counted, not only top-level statements.
    assert nested == (1,)
