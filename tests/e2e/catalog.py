"""What a database's catalog says about the platform's roles: one comparable snapshot.

The snapshot covers what the access plan decides (DESIGN.md §2): role attributes and settings,
memberships, database and schema privileges, schema owners and default privileges. Grantors are
left out (they depend on who applied the plan), and so are the roles that applied it: the
deployment's admin role and the reference cluster's superuser, whose name ``rename`` maps onto
the admin's (``CREATE SCHEMA ... AUTHORIZATION CURRENT_USER`` makes the applier the owner).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

Snapshot = dict[str, set[tuple[Any, ...]]]

_QUERIES: dict[str, str] = {
    "roles": """
        SELECT rolname, rolcanlogin, rolinherit, rolsuper, rolcreatedb, rolcreaterole,
               rolreplication, rolbypassrls
        FROM pg_roles WHERE rolname !~ '^pg_'""",
    "role_settings": """
        SELECT r.rolname, unnest(s.setconfig)
        FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
        WHERE s.setdatabase = 0""",
    "memberships": """
        SELECT g.rolname, m.rolname, am.admin_option
        FROM pg_auth_members am
        JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member""",
    "database_privileges": """
        SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable
        FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE d.datname = current_database()""",
    "schema_owners": """
        SELECT n.nspname, r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
        WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""",
    "schema_privileges": """
        SELECT n.nspname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable
        FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""",
    "default_privileges": """
        SELECT o.rolname, coalesce(n.nspname, ''), d.defaclobjtype,
               coalesce(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable
        FROM pg_default_acl d
        JOIN pg_roles o ON o.oid = d.defaclrole
        LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
        aclexplode(d.defaclacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee""",
}


def snapshot(
    conn: psycopg.Connection[Any], *, appliers: set[str], rename: Mapping[str, str]
) -> Snapshot:
    """The access-relevant catalog of ``conn``'s database.

    Rows that name an applier (role, member or grantee) are dropped, except schema owners and
    owner privileges, where ``rename`` makes the applying roles of two databases comparable.
    """
    out: Snapshot = {}
    for name, query in _QUERIES.items():
        rows = set()
        for row in conn.execute(query).fetchall():
            values = tuple(rename.get(v, v) if isinstance(v, str) else v for v in row)
            keep_applier = name in {"schema_owners", "schema_privileges"}
            if not keep_applier and any(isinstance(v, str) and v in appliers for v in row):
                continue
            rows.add(values)
        out[name] = rows
    return out


def differences(actual: Snapshot, expected: Snapshot) -> list[str]:
    """Readable lines for every row only one side has."""
    lines = []
    for name in sorted(set(actual) | set(expected)):
        for row in sorted(actual.get(name, set()) - expected.get(name, set()), key=repr):
            lines.append(f"{name}: only in the deployed database: {row}")
        for row in sorted(expected.get(name, set()) - actual.get(name, set()), key=repr):
            lines.append(f"{name}: only in the SQL rendering: {row}")
    return lines
