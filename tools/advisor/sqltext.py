"""What a policy expression or a function body does, read from its parse tree (pglast).

Pure functions over SQL text as the catalog deparses it (``pg_get_expr``, ``pg_get_functiondef``
with an empty ``search_path``, so every name outside ``pg_catalog`` comes schema-qualified).
Parsing instead of pattern matching is what finds a claim read behind any function name and
tells ``(SELECT f())`` (an init plan, once per statement) from ``f()`` (once per row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from pglast import ast, parse_plpgsql, parse_sql
from pglast.enums import SubLinkType
from pglast.parser import ParseError
from pglast.stream import RawStream

CLAIM_SETTING_PREFIX: Final = "request.jwt."
_COMPARISONS: Final = frozenset({"=", "<", ">", "<=", ">=", "<>"})
_CONCAT_FUNCTIONS: Final = frozenset({"concat", "concat_ws"})
# PL/pgSQL statements that run a string as SQL, and the field holding that string.
_DYNAMIC_FIELDS: Final = {
    "PLpgSQL_stmt_dynexecute": "query",
    "PLpgSQL_stmt_dynfors": "query",
    "PLpgSQL_stmt_return_query": "dynquery",
    "PLpgSQL_stmt_open": "dynquery",
}


class SqlTextError(ValueError):
    """SQL text the parser refuses (reported as a skipped object, never silently ignored)."""


def function_name(call: Any) -> str:
    """``schema.name`` of a call, or the bare name when unqualified (``pg_catalog.`` dropped)."""
    parts = [part.sval for part in call.funcname]
    if len(parts) == 2 and parts[0] == "pg_catalog":
        parts = parts[1:]
    return ".".join(parts)


def reads_claim_setting(call: Any) -> bool:
    """``current_setting('request.jwt...')``: the GUC PostgREST sets per request."""
    if function_name(call) != "current_setting" or not call.args:
        return False
    value = _string_constant(call.args[0])
    return value is not None and value.startswith(CLAIM_SETTING_PREFIX)


def _string_constant(node: Any) -> str | None:
    """The text of a string literal, also behind a cast (``'x'::text``)."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    value = getattr(getattr(node, "val", None), "sval", None)
    return value if isinstance(value, str) else None


def parse_expression(text: str) -> Any:
    """The parse tree of one scalar expression (a policy's USING or WITH CHECK)."""
    try:
        statement: Any = parse_sql(f"SELECT {text}")[0].stmt
    except ParseError as error:
        raise SqlTextError(f"cannot parse expression {text!r}: {error}") from error
    return statement.targetList[0].val


def deparse(node: Any) -> str:
    return str(RawStream()(node))


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, ast.Node):
        for field in getattr(type(node), "__slots__", ()):
            value = getattr(node, field, None)
            if value is not None:
                yield field, value


def walk(node: Any) -> Iterator[ast.Node]:
    """Every node below ``node`` (itself included), depth first."""
    if isinstance(node, list | tuple):
        for item in node:
            yield from walk(item)
        return
    if isinstance(node, ast.Node):
        yield node
        for _, value in _children(node):
            yield from walk(value)


def _is_initplan(sublink: ast.SubLink) -> bool:
    """``(SELECT f())`` without FROM: the planner evaluates it once, as an init plan."""
    select = sublink.subselect
    return isinstance(select, ast.SelectStmt) and not select.fromClause


@dataclass(frozen=True)
class ClaimCall:
    """One call in an expression that reads the request's claims, directly or through ``via``."""

    call: str
    via: str
    once_per_statement: bool


def claim_calls(node: Any, is_claim_function: Callable[[str], bool]) -> list[ClaimCall]:
    """Every claim-reading call in ``node``, and whether it runs once or once per row.

    A call runs once per statement when its nearest enclosing query is a ``(SELECT ...)``
    without FROM; anywhere else (the policy's own level, a subquery that scans a table) it
    runs for every row the planner filters.
    """
    found: list[ClaimCall] = []

    def visit(current: Any, once: bool) -> None:
        if isinstance(current, list | tuple):
            for item in current:
                visit(item, once)
            return
        if not isinstance(current, ast.Node):
            return
        if isinstance(current, ast.SubLink):
            visit(current.testexpr, once)
            visit(current.subselect, _is_initplan(current))
            return
        if isinstance(current, ast.SelectStmt) and current.fromClause:
            once = False
        if isinstance(current, ast.FuncCall):
            name = function_name(current)
            if reads_claim_setting(current):
                found.append(ClaimCall(deparse(current), "current_setting", once))
            elif is_claim_function(name):
                found.append(ClaimCall(deparse(current), name, once))
        for _, value in _children(current):
            visit(value, once)

    visit(node, False)
    return found


def _has(node: Any, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(n, kinds) for n in walk(node))


def wrap_claim_calls(text: str, is_claim_function: Callable[[str], bool]) -> str:
    """``text`` with each per-row claim read turned into an init plan ``(SELECT ...)``.

    The widest column-free operand around the call is wrapped
    (``owner = (SELECT current_setting(...)::json ->> 'sub')``), so the cast and the JSON
    lookup run once too; the meaning does not change, the expression being stable.
    """
    root = parse_expression(text)

    def per_row(node: Any) -> bool:
        return any(not c.once_per_statement for c in claim_calls(node, is_claim_function))

    def wrap(node: Any) -> Any:
        return ast.SubLink(
            subLinkType=SubLinkType.EXPR_SUBLINK,
            subselect=ast.SelectStmt(targetList=(ast.ResTarget(val=node),)),
        )

    def rewrite(node: Any) -> Any:
        if isinstance(node, list | tuple):
            return type(node)(rewrite(item) for item in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.SubLink) and _is_initplan(node):
            return node
        if (
            not isinstance(node, ast.SelectStmt | ast.SubLink | ast.ResTarget)
            and per_row(node)
            and not _has(node, (ast.ColumnRef, ast.SubLink, ast.ParamRef))
        ):
            return wrap(node)
        for field, value in _children(node):
            setattr(node, field, rewrite(value))
        return node

    return deparse(rewrite(root))


@dataclass(frozen=True)
class ColumnUse:
    """A column an expression compares: ``relation`` is None for the policy's own table."""

    qualifier: str | None
    column: str
    relations: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...]


def _range_vars(select: Any) -> tuple[tuple[str, ...], dict[str, str]]:
    names: list[str] = []
    aliases: dict[str, str] = {}
    for node in walk(select.fromClause):
        if isinstance(node, ast.RangeVar):
            name = f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname)
            names.append(name)
            aliases[str(node.alias.aliasname if node.alias else node.relname)] = name
    return tuple(names), aliases


def _column(node: Any) -> tuple[str | None, str] | None:
    if not isinstance(node, ast.ColumnRef):
        return None
    parts = [getattr(f, "sval", None) for f in node.fields or ()]
    if not parts or not all(isinstance(p, str) for p in parts):
        return None
    column = str(parts[-1])
    qualifier = str(parts[-2]) if len(parts) > 1 else None
    return qualifier, column


def compared_columns(text: str) -> list[ColumnUse]:
    """Columns an expression compares or tests with ``IN``/``ANY``: the ones an index serves.

    At the policy's own level a column compared with a column-free value (the subject, a
    constant) counts; in a subquery every column of the scanned tables that is compared
    (``m.team_id = t.team_id``) counts, since the subquery is run per row of the policy's table.
    """
    uses: list[ColumnUse] = []

    def visit(node: Any, relations: tuple[str, ...], aliases: dict[str, str]) -> None:
        if isinstance(node, list | tuple):
            for item in node:
                visit(item, relations, aliases)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SelectStmt) and node.fromClause:
            relations, aliases = _range_vars(node)
        if isinstance(node, ast.SubLink) and (col := _column(node.testexpr)) is not None:
            uses.append(ColumnUse(col[0], col[1], relations, tuple(aliases.items())))
        if isinstance(node, ast.A_Expr):
            op = node.name[0].sval if node.name else ""
            kind = getattr(node.kind, "name", "")
            if op in _COMPARISONS or kind in {"AEXPR_IN", "AEXPR_OP_ANY"}:
                for side, other in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                    col = _column(side)
                    if col is None:
                        continue
                    if relations or not _has(other, (ast.ColumnRef,)):
                        uses.append(ColumnUse(col[0], col[1], relations, tuple(aliases.items())))
        for _, value in _children(node):
            visit(value, relations, aliases)

    visit(parse_expression(text), (), {})
    return uses


@dataclass(frozen=True)
class DynamicSql:
    """An ``EXECUTE`` whose SQL string is put together from pieces at run time."""

    line: int
    statement: str
    expression: str


@dataclass(frozen=True)
class FunctionBody:
    """What a function body calls and which strings it executes as SQL."""

    calls: frozenset[str]
    reads_claim_setting: bool
    dynamic_sql: tuple[DynamicSql, ...]


def _concatenated(node: Any, built_by_concat: set[str]) -> bool:
    for n in walk(node):
        if isinstance(n, ast.A_Expr) and n.name and n.name[0].sval == "||":
            return True
        if isinstance(n, ast.FuncCall):
            name = function_name(n)
            if name in _CONCAT_FUNCTIONS:
                return True
            if name == "format" and n.args:
                template = _string_constant(n.args[0])
                if template is None or "%s" in template:
                    return True
        col = _column(n)
        if col is not None and col[0] is None and col[1] in built_by_concat:
            return True
    return False


def _calls_in(statements: list[Any]) -> tuple[set[str], bool]:
    calls: set[str] = set()
    reads = False
    for node in walk(statements):
        if isinstance(node, ast.FuncCall):
            calls.add(function_name(node))
            reads = reads or reads_claim_setting(node)
    return calls, reads


def sql_body(source: str) -> FunctionBody:
    """A ``LANGUAGE sql`` body (the statements, or a whole ``CREATE FUNCTION``)."""
    try:
        statements = [raw.stmt for raw in parse_sql(source)]
    except ParseError as error:
        raise SqlTextError(f"cannot parse SQL function body: {error}") from error
    calls, reads = _calls_in(statements)
    return FunctionBody(frozenset(calls), reads, ())


def _plpgsql_nodes(tree: Any) -> Iterator[dict[str, Any]]:
    if isinstance(tree, list):
        for item in tree:
            yield from _plpgsql_nodes(item)
    elif isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _plpgsql_nodes(value)


def _plpgsql_expr(expr: dict[str, Any]) -> list[Any]:
    query = str(expr["query"])
    if expr.get("parseMode", 0) in (3, 4, 5):  # assignment: "target := value"
        query = query.split(":=", 1)[-1] if ":=" in query else query.split("=", 1)[-1]
    text = query if expr.get("parseMode", 0) == 0 else f"SELECT {query}"
    try:
        return [raw.stmt for raw in parse_sql(text)]
    except ParseError as error:
        raise SqlTextError(f"cannot parse PL/pgSQL expression {query!r}: {error}") from error


def plpgsql_body(definition: str) -> FunctionBody:
    """A PL/pgSQL function from its full ``CREATE FUNCTION`` text (``pg_get_functiondef``)."""
    try:
        tree = parse_plpgsql(definition)
    except ParseError as error:
        raise SqlTextError(f"cannot parse PL/pgSQL function: {error}") from error
    calls: set[str] = set()
    reads = False
    built_by_concat: set[str] = set()
    for node in _plpgsql_nodes(tree):
        expr = node.get("PLpgSQL_expr")
        if isinstance(expr, dict) and "query" in expr:
            parsed = _plpgsql_expr(expr)
            more, more_reads = _calls_in(parsed)
            calls |= more
            reads = reads or more_reads
            query = str(expr["query"])
            if ":=" in query and _concatenated(parsed, set()):
                built_by_concat.add(query.split(":=", 1)[0].strip().lower())
    dynamic: list[DynamicSql] = []
    for node in _plpgsql_nodes(tree):
        for kind, field in _DYNAMIC_FIELDS.items():
            stmt = node.get(kind)
            if not isinstance(stmt, dict) or field not in stmt:
                continue
            expr = stmt[field]["PLpgSQL_expr"]
            if _concatenated(_plpgsql_expr(expr), built_by_concat):
                dynamic.append(
                    DynamicSql(
                        int(stmt.get("lineno", 0)),
                        kind.removeprefix("PLpgSQL_stmt_"),
                        str(expr["query"]),
                    )
                )
    return FunctionBody(frozenset(calls), reads, tuple(dynamic))
