"""What a database's catalog says about the platform, as comparable rows; and the checks on it.

``CATALOG_SQL`` describes every schema but PostgreSQL's own as ``(kind, object, detail)`` rows:
schemas, relations, columns, policies, grants, functions and the migration ledger. No OID, no
timestamp, and the database owner and superusers both read ``(platform)`` (their grants to each
other, and grant options among them, are left out): the same platform built by a superuser on a
throw-away server (``make migrate-validate``, ``tools.drift``) and by the admin role with a
superuser bootstrap in the cluster gives the same rows (tests/integration/test_baseline_job.py).
``(kind, object)`` is unique, so two snapshots compare by key (``diff``).

``VALIDATE_SQL`` lists what ``make migrate-validate`` refuses in the exposed schemas (and their
``<schema>_private``, where data masking keeps a masked table behind its view): a table
without forced row-level security or without a policy, a policy that names no role (unless its
comment acknowledges it for every role, as the advisor's ``allow policy_to_public`` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

CATALOG_SQL: Final = """
WITH platform_role AS (
    SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolsuper
    UNION
    SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
), who (oid, name) AS (
    SELECT r.oid, CASE WHEN r.oid IN (SELECT oid FROM platform_role) THEN '(platform)'
                       ELSE r.rolname::text END
    FROM pg_catalog.pg_roles r
    UNION ALL SELECT 0, 'PUBLIC'
), ns AS (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_catalog.pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
), rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relowner, c.relacl, c.relrowsecurity,
           c.relforcerowsecurity, ns.nspname,
           pg_catalog.format('%I.%I', ns.nspname, c.relname) AS qualified
    FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
), fn AS (
    SELECT p.oid, p.proowner, p.proacl,
           pg_catalog.format('%I.%I(%s)', ns.nspname, p.proname,
                             pg_catalog.pg_get_function_identity_arguments(p.oid)) AS signature
    FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
), acl (object, entry) AS (
    SELECT 'schema ' || ns.nspname, pg_catalog.aclexplode(ns.nspacl) FROM ns
    UNION ALL
    SELECT 'relation ' || rel.qualified, pg_catalog.aclexplode(rel.relacl) FROM rel
    UNION ALL
    SELECT 'function ' || fn.signature, pg_catalog.aclexplode(fn.proacl) FROM fn
)
SELECT 'schema', ns.nspname::text, 'owner ' || o.name
FROM ns JOIN who o ON o.oid = ns.nspowner
UNION ALL
SELECT 'relation', rel.qualified,
       pg_catalog.concat_ws(' ', 'kind ' || rel.relkind::text, 'owner ' || o.name,
           CASE WHEN rel.relrowsecurity THEN 'rls' END,
           CASE WHEN rel.relforcerowsecurity THEN 'forced' END,
           CASE WHEN rel.relkind IN ('v', 'm')
                THEN 'definition md5 ' || pg_catalog.md5(pg_catalog.pg_get_viewdef(rel.oid)) END)
FROM rel JOIN who o ON o.oid = rel.relowner
UNION ALL
SELECT 'column', rel.qualified || '.' || pg_catalog.quote_ident(a.attname),
       pg_catalog.concat_ws(' ', pg_catalog.format_type(a.atttypid, a.atttypmod),
           CASE WHEN a.attnotnull THEN 'not null' END,
           CASE WHEN a.attidentity <> '' THEN 'identity ' || a.attidentity::text END,
           CASE WHEN a.attgenerated <> '' THEN 'generated' END,
           'default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid))
FROM rel
JOIN pg_catalog.pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE rel.relkind <> 'S'
UNION ALL
SELECT 'policy', pg_catalog.format('%I.%I %I', p.schemaname, p.tablename, p.policyname),
       pg_catalog.concat_ws(' ', p.permissive, p.cmd,
           'to ' || pg_catalog.array_to_string(p.roles, ','),
           'using ' || p.qual, 'check ' || p.with_check)
FROM pg_catalog.pg_policies p JOIN ns ON ns.nspname = p.schemaname
UNION ALL
SELECT 'grant', acl.object || ' to ' || g.name,
       pg_catalog.string_agg(
           DISTINCT (acl.entry).privilege_type
               || CASE WHEN (acl.entry).is_grantable AND g.name <> '(platform)' THEN '*'
                       ELSE '' END,
           ',')
FROM acl JOIN who g ON g.oid = (acl.entry).grantee
GROUP BY acl.object, g.name
UNION ALL
SELECT 'function', fn.signature,
       pg_catalog.concat_ws(' ', 'returns ' || pg_catalog.pg_get_function_result(p.oid),
           'language ' || l.lanname, 'volatility ' || p.provolatile::text,
           CASE WHEN p.prosecdef THEN 'security definer' END,
           'set ' || pg_catalog.array_to_string(p.proconfig, ','),
           'owner ' || o.name, 'body md5 ' || pg_catalog.md5(p.prosrc))
FROM fn
JOIN pg_catalog.pg_proc p ON p.oid = fn.oid
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
JOIN who o ON o.oid = fn.proowner
"""

LEDGER_SQL: Final = """
SELECT 'migration', m.domain || '/' || pg_catalog.lpad(m.version::text, 4, '0') || '_'
       || m.name || '.sql', 'checksum ' || m.checksum
FROM platform.migration m
"""
"""The ledger as catalog rows: a live database behind (or ahead of) the bundle shows here."""

# A policy meant for every role, present and future (a tenant filter), says so in its comment
# with the advisor's acknowledgement (docs/advisor.md): ``advisor: allow policy_to_public``.
_ACKNOWLEDGED: Final = (
    "advisor:[[:space:]]*allow[[:space:]]+([a-z_]+[[:space:]]*,[[:space:]]*)*policy_to_public"
)

VALIDATE_SQL: Final = """
SELECT pg_catalog.format('%I.%I: row-level security is not forced', n.nspname, c.relname)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN platform.exposed_schema e ON n.nspname IN (e.name, e.name || '_private')
WHERE c.relkind IN ('r', 'p') AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
UNION ALL
SELECT pg_catalog.format('%I.%I: no policy (an API role would see no rows)', n.nspname, c.relname)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN platform.exposed_schema e ON n.nspname IN (e.name, e.name || '_private')
WHERE c.relkind IN ('r', 'p')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)
UNION ALL
SELECT pg_catalog.format('%I.%I: policy %I names no role (write TO <role>, ...)',
                         n.nspname, c.relname, p.polname)
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN platform.exposed_schema e ON n.nspname IN (e.name, e.name || '_private')
WHERE 0 = ANY (p.polroles)
  AND COALESCE(pg_catalog.obj_description(p.oid, 'pg_policy'), '') !~ '{ACKNOWLEDGED}'
ORDER BY 1
""".replace("{ACKNOWLEDGED}", _ACKNOWLEDGED)


@dataclass(frozen=True)
class Difference:
    """One catalog row that differs: ``expected`` None = only live, ``live`` None = missing."""

    kind: str
    object: str
    expected: str | None
    live: str | None

    def __str__(self) -> str:
        if self.expected is None:
            return f"+ {self.kind} {self.object}: not in the migrations ({self.live})"
        if self.live is None:
            return f"- {self.kind} {self.object}: missing ({self.expected})"
        return f"~ {self.kind} {self.object}: expected {self.expected}, live {self.live}"


Row = tuple[str, str, str]


def diff(expected: Iterable[Row], live: Iterable[Row]) -> list[Difference]:
    """Rows keyed by ``(kind, object)``: missing, unexpected and changed ones, sorted."""
    want = {(kind, obj): detail for kind, obj, detail in expected}
    have = {(kind, obj): detail for kind, obj, detail in live}
    found = [
        Difference(kind, obj, want.get((kind, obj)), have.get((kind, obj)))
        for kind, obj in sorted(want.keys() | have.keys())
        if want.get((kind, obj)) != have.get((kind, obj))
    ]
    return found
