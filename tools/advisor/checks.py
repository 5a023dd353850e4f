"""The checks, each reading the live catalog of one database.

Everything runs in one transaction that is rolled back at the end: the advisor switches to API
roles (``SET LOCAL ROLE``) to EXPLAIN with their policies, prepares statements and creates
hypothetical indexes, and none of it outlives the run. Each check runs under a savepoint, so
one that fails is reported as skipped and the others still run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from tools.advisor import sqltext
from tools.advisor.report import Finding, Report

Conn = psycopg.Connection[Any]
_COMMANDS: Final = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
_WRITES: Final = frozenset({"a", "w", "*"})
PACKAGES: Final = {
    "hypopg": "postgresql-15-hypopg",
    "pg_qualstats": "postgresql-15-pg-qualstats",
    "plpgsql_check": "postgresql-15-plpgsql-check",
}


def quote(conn: Conn, *parts: str) -> str:
    """A qualified identifier as SQL text (for fixes a reader copies)."""
    return sql.Identifier(*parts).as_string(conn)


@dataclass(frozen=True)
class Function:
    oid: int
    schema: str
    name: str
    language: str
    source: str
    definition: str
    security_definer: bool
    config: tuple[str, ...]
    arguments: str
    comment: str | None
    header: str

    @property
    def plpgsql_definition(self) -> str:
        """The body under a header of built-in types only (the parser knows no other schema)."""
        return f"CREATE FUNCTION f{self.header} LANGUAGE plpgsql AS $advisor${self.source}$advisor$"

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def signature(self) -> str:
        return f"{self.schema}.{self.name}({self.arguments})"


@dataclass(frozen=True)
class Policy:
    name: str
    schema: str
    table: str
    command: str
    permissive: bool
    roles: tuple[str, ...]
    using: str | None
    check: str | None
    comment: str | None

    @property
    def label(self) -> str:
        return f"policy {self.name} on {self.schema}.{self.table}"


class Advisor:
    """Runs every check against ``conn`` for the exposed ``schemas``."""

    def __init__(
        self, conn: Conn, schemas: list[str], authenticator: str, top_statements: int = 10
    ) -> None:
        self.conn = conn
        self.schemas = schemas
        self.top_statements = top_statements
        conn.execute("SET LOCAL search_path = ''")
        row = conn.execute("SELECT current_database()").fetchone()
        self.database = str(row[0]) if row else ""
        self.api_roles = self._api_roles(authenticator)
        self.report = Report(self.database, schemas, self.api_roles)
        self.functions = self._functions()
        self.bodies: dict[int, sqltext.FunctionBody] = {}
        self.claim_functions = self._claim_functions()

    # -- helpers -----------------------------------------------------------------------------
    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def _api_roles(self, authenticator: str) -> list[str]:
        return [
            r[0]
            for r in self.rows(
                "SELECT r.rolname::text FROM pg_catalog.pg_roles r "
                "WHERE r.rolname <> %(a)s AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles a "
                "  WHERE a.rolname = %(a)s AND pg_catalog.pg_has_role(a.oid, r.oid, 'MEMBER')) "
                "ORDER BY 1",
                {"a": authenticator},
            )
        ]

    def _functions(self) -> list[Function]:
        rows = self.rows(
            """
            SELECT p.oid, n.nspname::text, p.proname::text, l.lanname::text, p.prosrc,
                   pg_catalog.pg_get_functiondef(p.oid), p.prosecdef,
                   coalesce(p.proconfig, '{}'),
                   pg_catalog.pg_get_function_identity_arguments(p.oid),
                   pg_catalog.obj_description(p.oid, 'pg_proc'),
                   coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'),
                   p.pronargs, p.proretset, p.prorettype::pg_catalog.regtype::text
            FROM pg_catalog.pg_proc p
            JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            JOIN pg_catalog.pg_language l ON l.oid = p.prolang
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_%%'
              AND p.prokind IN ('f', 'p')
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                                AND d.objid = p.oid AND d.deptype = 'e')
            ORDER BY 2, 3, 1
            """
        )
        return [
            Function(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4] or "",
                r[5],
                r[6],
                tuple(r[7]),
                r[8],
                r[9],
                _plpgsql_header(r[10], r[11], r[12], r[13], r[14]),
            )
            for r in rows
        ]

    def body(self, function: Function) -> sqltext.FunctionBody | None:
        """The parsed body of a SQL or PL/pgSQL function (None for other languages)."""
        if function.oid in self.bodies:
            return self.bodies[function.oid]
        try:
            if function.language == "sql":
                parsed = sqltext.sql_body(function.source or function.definition)
            elif function.language == "plpgsql":
                parsed = sqltext.plpgsql_body(function.plpgsql_definition)
            else:
                return None
        except sqltext.SqlTextError as error:
            self.report.skip("function_body", f"{function.signature}: {error}")
            return None
        self.bodies[function.oid] = parsed
        return parsed

    def _claim_functions(self) -> dict[str, str]:
        """Functions that read the claims, each with how (directly or through which call).

        A fixed point over the call graph: a function reading ``request.jwt.*`` itself, then
        every function that calls one of those, however deep.
        """
        reads: dict[str, str] = {}
        calls: dict[str, frozenset[str]] = {}
        for function in self.functions:
            parsed = self.body(function)
            if parsed is None:
                continue
            calls[function.qualified] = parsed.calls
            if parsed.reads_claim_setting:
                reads[function.qualified] = "current_setting('request.jwt.claims')"
        changed = True
        while changed:
            changed = False
            for name, called in calls.items():
                if name in reads:
                    continue
                hit = sorted(c for c in called if c in reads)
                if hit:
                    reads[name] = f"{hit[0]}()"
                    changed = True
        return reads

    def is_claim_function(self, name: str) -> bool:
        return name in self.claim_functions

    def claim_chain(self, name: str) -> str:
        """``a() -> b() -> current_setting(...)``: how a function reaches the claims."""
        chain = [f"{name}()"]
        seen = {name}
        while name in self.claim_functions:
            step = self.claim_functions[name]
            chain.append(step)
            name = step.removesuffix("()")
            if name in seen:
                break
            seen.add(name)
        return " -> ".join(chain)

    def policies(self) -> list[Policy]:
        rows = self.rows(
            """
            SELECT p.polname::text, n.nspname::text, c.relname::text, p.polcmd::text,
                   p.polpermissive,
                   ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC'
                                     ELSE pg_catalog.pg_get_userbyid(r)::text END
                         FROM pg_catalog.unnest(p.polroles) r),
                   pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                   pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
                   pg_catalog.obj_description(p.oid, 'pg_policy')
            FROM pg_catalog.pg_policy p
            JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%s)
            ORDER BY 2, 3, 1
            """,
            (self.schemas,),
        )
        return [Policy(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6], r[7], r[8]) for r in rows]

    # -- the checks ----------------------------------------------------------------------------
    def run(self, checks: list[tuple[str, Callable[[], None]]] | None = None) -> Report:
        for name, check in checks or self.all_checks():
            try:
                with self.savepoint():
                    check()
            except psycopg.Error as error:
                self.report.skip(name, f"failed: {str(error).strip()}")
        return self.report

    def all_checks(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("rls_per_row_claim", self.check_per_row_claims),
            ("rls_disabled", self.check_exposed_tables),
            ("policy_overlap", self.check_overlap),
            ("policy_to_public", self.check_policy_roles),
            ("fk_unindexed", self.check_foreign_keys),
            ("policy_column_unindexed", self.check_policy_columns),
            ("index_advice", self.check_heavy_statements),
            ("definer_search_path", self.check_definer_search_path),
            ("dynamic_sql", self.check_dynamic_sql),
            ("plpgsql_check", self.check_plpgsql_check),
        ]

    def check_per_row_claims(self) -> None:
        for policy in self.policies():
            parts = [("USING", policy.using), ("WITH CHECK", policy.check)]
            per_row: list[tuple[str, sqltext.ClaimCall]] = []
            fixed: dict[str, str] = {}
            for clause, text in parts:
                if not text:
                    continue
                try:
                    calls = sqltext.claim_calls(
                        sqltext.parse_expression(text), self.is_claim_function
                    )
                except sqltext.SqlTextError as error:
                    self.report.skip("rls_per_row_claim", f"{policy.label}: {error}")
                    continue
                slow = [c for c in calls if not c.once_per_statement]
                if slow:
                    per_row += [(clause, c) for c in slow]
                    fixed[clause] = sqltext.wrap_claim_calls(text, self.is_claim_function)
            if not per_row:
                continue
            how = "; ".join(
                f"{clause}: {c.call}"
                + ("" if c.via == "current_setting" else f" ({self.claim_chain(c.via)})")
                for clause, c in per_row
            )
            clauses = " ".join(f"{clause} ({text})" for clause, text in fixed.items())
            self.report.add(
                Finding(
                    "rls_per_row_claim",
                    policy.label,
                    f"evaluated for every row the policy filters, not once per statement: {how}",
                    f"ALTER POLICY {quote(self.conn, policy.name)} ON "
                    f"{quote(self.conn, policy.schema, policy.table)} {clauses};",
                    self._explain_policy(policy, per_row),
                ),
                policy.comment,
            )

    def _explain_policy(self, policy: Policy, per_row: list[tuple[str, sqltext.ClaimCall]]) -> str:
        """EXPLAIN as a role the policy applies to: the claim read in a ``Filter:`` line."""
        if policy.command == "a" or all(clause == "WITH CHECK" for clause, _ in per_row):
            return "static only: EXPLAIN does not show WITH CHECK expressions"
        command = {"r": "SELECT", "*": "SELECT", "w": "UPDATE", "d": "DELETE"}[policy.command]
        role = self._role_for(policy, command)
        if role is None:
            return f"not confirmed: no API role the policy applies to holds {command}"
        table = quote(self.conn, policy.schema, policy.table)
        statement = {
            "SELECT": f"SELECT * FROM {table}",
            "UPDATE": f"UPDATE {table} SET ctid = ctid",
            "DELETE": f"DELETE FROM {table}",
        }[command]
        if command == "UPDATE":
            column = self.rows(
                "SELECT a.attname::text FROM pg_catalog.pg_attribute a "
                "WHERE a.attrelid = %s::pg_catalog.regclass AND a.attnum > 0 "
                "AND NOT a.attisdropped ORDER BY a.attnum LIMIT 1",
                (table,),
            )[0][0]
            col = quote(self.conn, column)
            statement = f"UPDATE {table} SET {col} = {col}"
        try:
            with self.savepoint():
                self.conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                self.conn.execute("SET LOCAL row_security = on")
                plan = self.rows(f"EXPLAIN (FORMAT JSON) {statement}")[0][0]
                self.conn.execute("RESET ROLE")
        except psycopg.Error as error:
            return f"not confirmed: EXPLAIN as {role} failed: {str(error).strip()}"
        needles = {
            "current_setting('request.jwt" if c.via == "current_setting" else f"{c.via}("
            for _, c in per_row
        }
        for node in plan_nodes(plan[0]["Plan"]):
            for key in ("Filter", "Join Filter"):
                text = str(node.get(key, ""))
                if any(n in text for n in needles):
                    return f"EXPLAIN {statement} as {role}: {node['Node Type']} {key}: {text}"
        return f"not confirmed: EXPLAIN {statement} as {role} shows no claim read in a Filter"

    def _role_for(self, policy: Policy, command: str) -> str | None:
        """An API role the policy applies to that holds ``command`` on its table."""
        rows = self.rows(
            """
            SELECT r FROM pg_catalog.unnest(%(api)s::text[]) r
            WHERE pg_catalog.has_table_privilege(r, %(table)s, %(command)s)
              AND ('PUBLIC' = ANY(%(roles)s) OR EXISTS (
                    SELECT 1 FROM pg_catalog.unnest(%(roles)s::text[]) p
                    JOIN pg_catalog.pg_roles pr ON pr.rolname = p
                    WHERE pg_catalog.pg_has_role(r, pr.oid, 'MEMBER')))
            ORDER BY 1 LIMIT 1
            """,
            {
                "api": self.api_roles,
                "table": quote(self.conn, policy.schema, policy.table),
                "command": command,
                "roles": list(policy.roles),
            },
        )
        return str(rows[0][0]) if rows else None

    def check_exposed_tables(self) -> None:
        rows = self.rows(
            """
            SELECT n.nspname::text, c.relname::text, c.relrowsecurity,
                   (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid),
                   ARRAY(SELECT r FROM pg_catalog.unnest(%s::text[]) r
                         WHERE pg_catalog.has_table_privilege(r, c.oid,
                               'SELECT,INSERT,UPDATE,DELETE')),
                   pg_catalog.obj_description(c.oid, 'pg_class')
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
            ORDER BY 1, 2
            """,
            (self.api_roles, self.schemas),
        )
        for schema, table, rls, policies, holders, comment in rows:
            name = quote(self.conn, schema, table)
            who = ", ".join(holders) or "no API role yet (a later grant exposes it)"
            if not rls:
                self.report.add(
                    Finding(
                        "rls_disabled",
                        f"table {schema}.{table}",
                        f"row-level security is off in an exposed schema: every row is "
                        f"visible to whoever holds a privilege on it ({who})",
                        f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY; then add policies",
                    ),
                    comment,
                )
            elif policies == 0 and holders:
                self.report.add(
                    Finding(
                        "rls_no_policy",
                        f"table {schema}.{table}",
                        f"RLS is on but no policy exists: {who} hold privileges and see no "
                        "rows (a missing policy denies everything)",
                        f"CREATE POLICY ... ON {name} FOR <command> TO <role> USING (...); "
                        "or REVOKE the privileges if the table is not meant for the API",
                    ),
                    comment,
                )

    def check_overlap(self) -> None:
        rows = self.rows(
            """
            SELECT n.nspname::text, c.relname::text, r.rolname, cmd.name,
                   ARRAY_AGG(p.polname::text ORDER BY p.polname)
            FROM pg_catalog.pg_policy p
            JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            CROSS JOIN pg_catalog.unnest(%s::text[]) AS r(rolname)
            CROSS JOIN (VALUES ('r', 'SELECT'), ('a', 'INSERT'), ('w', 'UPDATE'),
                               ('d', 'DELETE')) AS cmd(code, name)
            WHERE p.polpermissive AND n.nspname = ANY(%s)
              AND (p.polcmd = '*' OR p.polcmd = cmd.code)
              AND pg_catalog.has_table_privilege(r.rolname, c.oid, cmd.name)
              AND (0::pg_catalog.oid = ANY(p.polroles) OR EXISTS (
                    SELECT 1 FROM pg_catalog.unnest(p.polroles) pr
                    WHERE pr <> 0 AND pg_catalog.pg_has_role(r.rolname, pr, 'MEMBER')))
            GROUP BY 1, 2, 3, 4
            HAVING count(*) > 1
            ORDER BY 1, 2, 5, 3, 4
            """,
            (self.api_roles, self.schemas),
        )
        grouped: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
        for schema, table, role, command, names in rows:
            grouped.setdefault((schema, table, tuple(names)), []).append(f"{role} {command}")
        comments = {(p.schema, p.table, p.name): p.comment for p in self.policies()}
        for (schema, table, names), pairs in grouped.items():
            comment = " ".join(c for n in names if (c := comments.get((schema, table, n))))
            self.report.add(
                Finding(
                    "policy_overlap",
                    f"table {schema}.{table} policies {', '.join(names)}",
                    f"permissive policies {', '.join(names)} all apply to "
                    f"{'; '.join(pairs)}: each is evaluated for every row and their results "
                    "OR-ed, so the widest one decides and the plan pays for all",
                    "merge them into one policy per role and action (OR the conditions), "
                    "or narrow their TO roles / FOR commands so that one applies",
                ),
                comment or None,
            )

    def check_policy_roles(self) -> None:
        for policy in self.policies():
            table = quote(self.conn, policy.schema, policy.table)
            if "PUBLIC" in policy.roles:
                self.report.add(
                    Finding(
                        "policy_to_public",
                        policy.label,
                        "no TO clause: the policy applies to PUBLIC, i.e. to every role, "
                        "including roles added later",
                        f"ALTER POLICY {quote(self.conn, policy.name)} ON {table} "
                        "TO <the API roles it is meant for>;",
                    ),
                    policy.comment,
                )
            effective = policy.check
            if effective is None and policy.command in {"w", "*"}:
                effective = policy.using
            if policy.command in _WRITES and effective is not None and effective == "true":
                self.report.add(
                    Finding(
                        "with_check_true",
                        policy.label,
                        f"FOR {_COMMANDS[policy.command]} with WITH CHECK (true): "
                        f"{', '.join(policy.roles)} may write rows with any content, "
                        "including rows that no USING condition would let them see",
                        f"ALTER POLICY {quote(self.conn, policy.name)} ON {table} WITH CHECK "
                        "(<condition on the new row, e.g. owner = (SELECT platform.jwt_sub())>);",
                    ),
                    policy.comment,
                )

    def _index_leaders(self) -> dict[tuple[str, str], set[str]]:
        leaders: dict[tuple[str, str], set[str]] = {}
        for schema, table, column in self.rows(
            """
            SELECT n.nspname::text, c.relname::text, a.attname::text
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            """
        ):
            leaders.setdefault((schema, table), set()).add(column)
        return leaders

    def check_foreign_keys(self) -> None:
        rows = self.rows(
            """
            SELECT con.conname::text, n.nspname::text, c.relname::text,
                   ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(con.conkey)
                         WITH ORDINALITY k(attnum, o)
                         JOIN pg_catalog.pg_attribute a
                           ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.o),
                   con.confrelid::pg_catalog.regclass::text,
                   pg_catalog.obj_description(con.oid, 'pg_constraint')
            FROM pg_catalog.pg_constraint con
            JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE con.contype = 'f' AND n.nspname = ANY(%s)
              AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_index i
                WHERE i.indrelid = con.conrelid AND i.indisvalid
                  AND ARRAY(SELECT k FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY u(k, o)
                            WHERE o <= pg_catalog.cardinality(con.conkey))
                      OPERATOR(pg_catalog.@>) con.conkey
                  AND ARRAY(SELECT k FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY u(k, o)
                            WHERE o <= pg_catalog.cardinality(con.conkey))
                      OPERATOR(pg_catalog.<@) con.conkey)
            ORDER BY 2, 3, 1
            """,
            (self.schemas,),
        )
        for name, schema, table, columns, target, comment in rows:
            cols = ", ".join(quote(self.conn, c) for c in columns)
            self.report.add(
                Finding(
                    "fk_unindexed",
                    f"foreign key {name} on {schema}.{table} ({', '.join(columns)})",
                    f"no index starts with ({', '.join(columns)}): every delete or key update "
                    f"in {target} scans {schema}.{table}, and joins on the key cannot use one",
                    f"CREATE INDEX CONCURRENTLY ON {quote(self.conn, schema, table)} ({cols});",
                ),
                comment,
            )

    def check_policy_columns(self) -> None:
        leaders = self._index_leaders()
        columns = self._columns()
        reported: set[tuple[str, str, str]] = set()
        for policy in self.policies():
            own = (policy.schema, policy.table)
            for text in (policy.using, policy.check):
                if not text:
                    continue
                try:
                    uses = sqltext.compared_columns(text)
                except sqltext.SqlTextError:
                    continue
                for use in uses:
                    target = _resolve(use, own, columns)
                    if target is None:
                        continue
                    key = (*target, use.column)
                    if key in reported or use.column in leaders.get(target, set()):
                        continue
                    reported.add(key)
                    self.report.add(
                        Finding(
                            "policy_column_unindexed",
                            f"column {target[0]}.{target[1]}.{use.column}",
                            f"{policy.label} compares it, and no index starts with it: the "
                            "policy's condition is checked by scanning the table",
                            f"CREATE INDEX CONCURRENTLY ON {quote(self.conn, *target)} "
                            f"({quote(self.conn, use.column)});",
                        ),
                        policy.comment,
                    )

    def _columns(self) -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for schema, table, column in self.rows(
            """
            SELECT n.nspname::text, c.relname::text, a.attname::text
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'm')
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            """
        ):
            out.setdefault((schema, table), set()).add(column)
        return out

    def check_definer_search_path(self) -> None:
        for function in self.functions:
            if function.schema not in self.schemas or not function.security_definer:
                continue
            if any(c.startswith("search_path=") for c in function.config):
                continue
            self.report.add(
                Finding(
                    "definer_search_path",
                    f"function {function.signature}",
                    "SECURITY DEFINER without SET search_path: it runs with its owner's "
                    "rights and resolves unqualified names through the caller's search_path, "
                    "which a caller can point at objects of its own (pin it, and "
                    "schema-qualify every name in the body)",
                    f"ALTER FUNCTION {quote(self.conn, function.schema, function.name)}"
                    f"({function.arguments}) SET search_path = '';",
                ),
                function.comment,
            )

    def check_dynamic_sql(self) -> None:
        for function in self.functions:
            if function.schema not in self.schemas:
                continue
            parsed = self.body(function)
            if parsed is None:
                continue
            for dynamic in parsed.dynamic_sql:
                self.report.add(
                    Finding(
                        "dynamic_sql",
                        f"function {function.signature}",
                        f"line {dynamic.line}: {dynamic.statement} of a string put together "
                        f"at run time ({dynamic.expression}): a caller's argument can become "
                        "SQL (injection), and the API exposes the function",
                        "pass values as parameters (EXECUTE ... USING $1), quote identifiers "
                        "with format('%I') / quote_ident, or write the statement statically",
                    ),
                    function.comment,
                )

    def check_plpgsql_check(self) -> None:
        if not self._extension("plpgsql_check", "plpgsql_check"):
            return
        schema = self.extension_schema("plpgsql_check")
        check = quote(self.conn, schema, "plpgsql_check_function_tb")
        for function in self.functions:
            if function.schema not in self.schemas or function.language != "plpgsql":
                continue
            if self.rows(
                "SELECT prorettype = 'pg_catalog.trigger'::pg_catalog.regtype "
                "FROM pg_catalog.pg_proc WHERE oid = %s",
                (function.oid,),
            )[0][0]:
                continue
            for level, message, line in self.rows(
                f"SELECT level, message, lineno FROM {check}(%s, security_warnings => true) "
                "WHERE level = 'security'",
                (function.oid,),
            ):
                self.report.add(
                    Finding(
                        "plpgsql_check",
                        f"function {function.signature}",
                        f"plpgsql_check {level} at line {line}: {message}",
                        "quote the value (quote_literal/format('%L')) or pass it with USING",
                    ),
                    function.comment,
                )

    def extension_schema(self, name: str) -> str:
        """The schema an installed extension's objects live in (names are qualified)."""
        return str(
            self.rows(
                "SELECT n.nspname::text FROM pg_catalog.pg_extension e "
                "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = %s",
                (name,),
            )[0][0]
        )

    def _extension(self, name: str, check: str) -> bool:
        """True when ``name`` is installed here; else a skipped entry saying how to get it."""
        if self.rows("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s", (name,)):
            return True
        available = self.rows(
            "SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = %s", (name,)
        )
        where = (
            f"available on the server: CREATE EXTENSION {name}; in database {self.database}"
            if available
            else f"not in this server's image: install the {PACKAGES.get(name, name)} package "
            "(docs/advisor.md, images)"
        )
        self.report.skip(check, f"extension {name} is not installed ({where})")
        return False

    # -- heavy statements ----------------------------------------------------------------------
    def check_heavy_statements(self) -> None:
        if not self._extension("pg_stat_statements", "index_advice"):
            return
        statements = self._heavy_statements()
        advised: set[tuple[str, str, tuple[str, ...]]] = set()
        if self._extension("hypopg", "index_advice"):
            for queryid, query, calls, total_ms in statements:
                for finding, key in self._hypothetical_advice(queryid, query, calls, total_ms):
                    if key not in advised:
                        advised.add(key)
                        self.report.add(finding)
        if self._qualstats_ready():
            for finding, key in self._qualstats_advice():
                if key not in advised:
                    advised.add(key)
                    self.report.add(finding)

    def _heavy_statements(self) -> list[tuple[int, str, int, float]]:
        pss = self.extension_schema("pg_stat_statements")
        rows = self.rows(
            f"SELECT s.queryid, s.query, s.calls, s.total_exec_time "
            f"FROM {quote(self.conn, pss, 'pg_stat_statements')} s "
            "WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database "
            "                WHERE datname = pg_catalog.current_database()) "
            "AND s.toplevel AND s.query ~* '^\\s*(select|with|update|delete)\\M' "
            # Other roles' statement texts are hidden without pg_read_all_stats.
            "AND s.query <> '<insufficient privilege>' "
            "AND s.query !~* '\\m(pg_catalog|pg_stat_statements|hypopg|pg_qualstats)\\M' "
            "ORDER BY s.total_exec_time DESC LIMIT %s",
            (self.top_statements,),
        )
        return [(int(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in rows]

    def _plan(self, query: str, parameters: int) -> dict[str, Any]:
        """The generic plan of a normalised statement (``$n`` parameters, PostgreSQL 15)."""
        self.conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        self.conn.execute(f"PREPARE pgplatform_advisor AS {query}")
        try:
            args = ", ".join(["NULL"] * parameters)
            execute = (
                f"EXECUTE pgplatform_advisor({args})"
                if parameters
                else ("EXECUTE pgplatform_advisor")
            )
            plan: dict[str, Any] = self.rows(f"EXPLAIN (FORMAT JSON, VERBOSE) {execute}")[0][0][0]
            return plan["Plan"]
        finally:
            self.conn.execute("DEALLOCATE pgplatform_advisor")

    def _hypothetical_advice(
        self, queryid: int, query: str, calls: int, total_ms: float
    ) -> list[tuple[Finding, tuple[str, str, tuple[str, ...]]]]:
        parameters = max((int(m) for m in re.findall(r"\$(\d+)", query)), default=0)
        try:
            with self.savepoint():
                before = self._plan(query, parameters)
        except psycopg.Error as error:
            self.report.skip("index_advice", f"statement {queryid}: {str(error).strip()}")
            return []
        out = []
        hypopg = quote(self.conn, self.extension_schema("hypopg"))
        for node in plan_nodes(before):
            if node.get("Node Type") != "Seq Scan" or "Filter" not in node:
                continue
            schema, table = str(node["Schema"]), str(node["Relation Name"])
            alias = str(node.get("Alias", table))
            try:
                uses = sqltext.compared_columns(str(node["Filter"]))
            except sqltext.SqlTextError:
                continue
            wanted = sorted({u.column for u in uses if u.qualifier in (None, alias, table)})
            candidates = [(c,) for c in wanted] + ([tuple(wanted)] if len(wanted) > 1 else [])
            best: tuple[float, tuple[str, ...]] | None = None
            for columns in candidates:
                cols = ", ".join(quote(self.conn, c) for c in columns)
                ddl = f"CREATE INDEX ON {quote(self.conn, schema, table)} ({cols})"
                with self.savepoint():
                    self.rows(f"SELECT * FROM {hypopg}.hypopg_create_index(%s)", (ddl,))
                    after = self._plan(query, parameters)
                    self.rows(f"SELECT {hypopg}.hypopg_reset()")
                cost = float(after["Total Cost"])
                if best is None or cost < best[0]:
                    best = (cost, columns)
            if best is None or best[0] * 2 > float(before["Total Cost"]):
                continue
            cols = ", ".join(quote(self.conn, c) for c in best[1])
            summary = " ".join(query.split())
            out.append(
                (
                    Finding(
                        "index_advice",
                        f"table {schema}.{table} ({', '.join(best[1])})",
                        f"statement {queryid} ({calls} calls, {total_ms:.0f} ms in total) scans "
                        f"{schema}.{table} filtering on {node['Filter']}; with a hypothetical "
                        f"index the plan costs {best[0]:.0f} instead of "
                        f"{float(before['Total Cost']):.0f} (hypopg)",
                        f"CREATE INDEX CONCURRENTLY ON {quote(self.conn, schema, table)} ({cols});",
                        summary[:300],
                    ),
                    (schema, table, best[1]),
                )
            )
        return out

    def _qualstats_ready(self) -> bool:
        if not self._extension("pg_qualstats", "index_advice"):
            return False
        loaded = self.rows("SELECT pg_catalog.current_setting('shared_preload_libraries')")[0][0]
        if "pg_qualstats" not in loaded:
            self.report.skip(
                "index_advice",
                "pg_qualstats is installed but not in shared_preload_libraries: it collects "
                "nothing until the server loads it",
            )
            return False
        return True

    def _qualstats_advice(self) -> list[tuple[Finding, tuple[str, str, tuple[str, ...]]]]:
        schema = self.extension_schema("pg_qualstats")
        advisor = quote(self.conn, schema, "pg_qualstats_index_advisor")
        # Its body names its own functions unqualified: run it on the extension's schema.
        self.conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (schema,))
        try:
            advice = self.rows(f"SELECT {advisor}(min_filter => 50, min_selectivity => 50)")[0][0]
        finally:
            self.conn.execute("SET LOCAL search_path = ''")
        if isinstance(advice, str):
            advice = json.loads(advice)
        leaders = self._index_leaders()
        out = []
        for entry in advice.get("indexes") or []:
            ddl = str(entry["ddl"] if isinstance(entry, dict) else entry)
            match = re.search(r"ON\s+(\S+?)\.(\S+)\s+USING\s+\w+\s*\((.*)\)", ddl)
            if match is None:
                continue
            schema_name, table = match.group(1).strip('"'), match.group(2).strip('"')
            columns = tuple(c.strip().strip('"') for c in match.group(3).split(","))
            # Its statistics outlive an index created since: the catalog has the last word.
            if schema_name not in self.schemas or columns[0] in leaders.get(
                (schema_name, table), set()
            ):
                continue
            out.append(
                (
                    Finding(
                        "index_advice",
                        f"table {schema_name}.{table} ({', '.join(columns)})",
                        "pg_qualstats sampled predicates on these columns that filter most "
                        "rows they read, and no index serves them",
                        ddl.replace("CREATE INDEX ON", "CREATE INDEX CONCURRENTLY ON", 1) + ";",
                    ),
                    (schema_name, table, columns),
                )
            )
        return out


def _plpgsql_header(
    names: list[str], modes: list[str], inputs: int, returns_set: bool, returns: str
) -> str:
    """Arguments and result of a PL/pgSQL function, every type replaced by a built-in one.

    Names and modes are what the body's parse depends on (variables, OUT parameters,
    ``RETURN NEXT``/``QUERY``, ``NEW``/``OLD``); the types are not.
    """
    if returns in ("trigger", "event_trigger"):
        return f"() RETURNS {returns}"
    modes = modes or ["i"] * inputs
    args: list[str] = []
    outs = 0
    for index, mode in enumerate(modes):
        name = names[index] if index < len(names) and names[index] else ""
        keyword = {"i": "", "o": "OUT ", "b": "INOUT ", "v": "VARIADIC ", "t": "OUT "}[mode]
        outs += mode in ("o", "b", "t")
        kind = "text[]" if mode == "v" else "text"
        args.append(f"{keyword}{name} {kind}".strip())
    if returns == "void":
        result = "void"
    elif outs == 1:
        result = "text"
    else:
        result = "record"
    return f"({', '.join(args)}) RETURNS {'SETOF ' if returns_set else ''}{result}"


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def _resolve(
    use: sqltext.ColumnUse, own: tuple[str, str], columns: dict[tuple[str, str], set[str]]
) -> tuple[str, str] | None:
    """The table a compared column belongs to, or None when it cannot be told."""
    aliases = dict(use.aliases)
    candidates: list[str]
    if use.qualifier is not None:
        if use.qualifier not in aliases:
            return own if use.qualifier == own[1] and not use.relations else None
        candidates = [aliases[use.qualifier]]
    else:
        candidates = list(use.relations)
    for name in candidates:
        schema, _, table = name.rpartition(".")
        key = (schema or "public", table)
        if use.column in columns.get(key, set()):
            return key
    if not use.relations and use.column in columns.get(own, set()):
        return own
    return None
