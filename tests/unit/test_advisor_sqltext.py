"""The advisor's reading of policy expressions and function bodies (pglast, no database)."""

from __future__ import annotations

import pytest

from tools.advisor import sqltext
from tools.advisor.report import Finding, Report, allowed_checks

pytestmark = pytest.mark.unit

CLAIM_FUNCTIONS = {"platform.jwt_sub", "app.current_owner"}


def is_claim(name: str) -> bool:
    return name in CLAIM_FUNCTIONS


def per_row(expression: str) -> list[str]:
    calls = sqltext.claim_calls(sqltext.parse_expression(expression), is_claim)
    return [c.via for c in calls if not c.once_per_statement]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("(owner = platform.jwt_sub())", ["platform.jwt_sub"]),
        ("(owner = ( SELECT platform.jwt_sub() AS jwt_sub))", []),
        ("(owner = app.current_owner())", ["app.current_owner"]),
        (
            "(owner = ((current_setting('request.jwt.claims'::text, true))::json ->> 'sub'))",
            ["current_setting"],
        ),
        ("(owner = ( SELECT (current_setting('request.jwt.claims', true))::json ->> 'sub'))", []),
        # A subquery that scans a table runs the call for each of its rows.
        (
            "(EXISTS ( SELECT 1 FROM app.members m "
            "WHERE ((m.team = t.team) AND (m.sub = platform.jwt_sub()))))",
            ["platform.jwt_sub"],
        ),
        (
            "(EXISTS ( SELECT 1 FROM app.members m "
            "WHERE ((m.team = t.team) AND (m.sub = ( SELECT platform.jwt_sub())))))",
            [],
        ),
        # Other settings and other functions are not claims.
        ("(tenant = current_setting('app.tenant'))", []),
        ("(owner = lower(name))", []),
    ],
)
def test_claim_reads_per_row_or_once(expression: str, expected: list[str]) -> None:
    assert per_row(expression) == expected


@pytest.mark.parametrize(
    ("expression", "fixed"),
    [
        ("(owner = platform.jwt_sub())", "owner = (SELECT platform.jwt_sub())"),
        (
            "(owner = ((current_setting('request.jwt.claims'::text, true))::json ->> 'sub'))",
            "owner = (SELECT CAST(current_setting(CAST('request.jwt.claims' AS text), TRUE) "
            "AS pg_catalog.json) ->> 'sub')",
        ),
        (
            "((owner = app.current_owner()) OR published)",
            "owner = (SELECT app.current_owner()) OR published",
        ),
        ("(owner = ( SELECT platform.jwt_sub()))", "owner = (SELECT platform.jwt_sub())"),
    ],
)
def test_the_fix_wraps_the_widest_column_free_operand(expression: str, fixed: str) -> None:
    assert sqltext.wrap_claim_calls(expression, is_claim) == fixed
    assert per_row(fixed) == []


def test_compared_columns_of_the_table_and_of_subqueries() -> None:
    uses = sqltext.compared_columns(
        "((owner = ( SELECT platform.jwt_sub())) AND published AND (team_id IN ( SELECT "
        "m.team_id FROM app.members m WHERE (m.sub = ( SELECT platform.jwt_sub())))))"
    )
    own = [(u.qualifier, u.column) for u in uses if not u.relations]
    sub = [(u.qualifier, u.column, u.relations) for u in uses if u.relations]
    # A bare boolean (published) is not a comparison an index serves.
    assert own == [(None, "owner"), (None, "team_id")]
    assert sub == [("m", "sub", ("app.members",))]


def test_function_body_calls_and_claim_reads() -> None:
    body = sqltext.sql_body("SELECT app.lookup(pg_catalog.current_setting('request.jwt.claims'))")
    assert body.calls == {"app.lookup", "current_setting"}
    assert body.reads_claim_setting


PLPGSQL = """CREATE FUNCTION f(filter text, name text) RETURNS SETOF record LANGUAGE plpgsql AS $$
DECLARE q text; safe text;
BEGIN
  q := 'SELECT * FROM app.t WHERE ' || filter;
  EXECUTE q;
  EXECUTE 'SELECT * FROM app.t WHERE x = ' || quote_literal(name);
  EXECUTE format('SELECT * FROM %s', name);
  EXECUTE concat('SELECT ', name);
  safe := 'SELECT 1';
  EXECUTE safe;
  EXECUTE format('SELECT * FROM %I WHERE x = $1', name) USING filter;
  EXECUTE 'SELECT * FROM app.t WHERE x = $1' USING filter;
  RETURN QUERY EXECUTE 'SELECT ' || name;
  IF platform.jwt_sub() IS NULL THEN RETURN; END IF;
END $$"""


def test_dynamic_sql_from_concatenated_strings_only() -> None:
    body = sqltext.plpgsql_body(PLPGSQL)
    assert [(d.line, d.statement) for d in body.dynamic_sql] == [
        (5, "dynexecute"),
        (6, "dynexecute"),
        (7, "dynexecute"),
        (8, "dynexecute"),
        (13, "return_query"),
    ]
    assert "platform.jwt_sub" in body.calls
    assert not body.reads_claim_setting


def test_unparsable_text_is_an_error_not_a_silent_pass() -> None:
    with pytest.raises(sqltext.SqlTextError, match="cannot parse"):
        sqltext.parse_expression("owner = = 1")


def test_an_object_comment_acknowledges_named_checks_only() -> None:
    comment = "Admins write anything. advisor: allow with_check_true, policy_overlap"
    assert allowed_checks(comment) == {"with_check_true", "policy_overlap"}
    report = Report("db", ["s"], [])
    report.add(Finding("with_check_true", "policy p on s.t", "why", "fix"), comment)
    report.add(Finding("policy_to_public", "policy p on s.t", "why", "fix"), comment)
    assert [f.check for f in report.findings] == ["policy_to_public"]
    assert [f.check for f, _ in report.acknowledged] == ["with_check_true"]
    assert report.counts()["with_check_true"] == 0
    assert report.summary()[-1] == (
        "advisor: database db: 1 findings (error=0 warning=1 info=0), 1 acknowledged, "
        "0 checks skipped"
    )
