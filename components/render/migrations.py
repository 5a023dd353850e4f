"""Versioned SQL migrations per domain (``migrations/<domain>/NNNN_<name>.sql``) and their runner.

A stack applies the migrations of its domains with one psql script (``migrate.psql``) run by a
Job named by the bundle's hash, like the platform baseline. The script, in one session:

1. takes a session-level advisory lock (``ADVISORY_LOCK_KEY``): a second runner waits for the
   first, then finds its work done;
2. checks the whole bundle against the ledger ``platform.migration``
   (``db/075_migration_ledger.sql``) before applying anything: an applied migration whose file
   changed, that was renumbered or removed, or a pending migration older than an applied one
   is refused with its name;
3. applies each pending migration in its own transaction as the schema owner
   (``pgplatform_owner``) with ``lock_timeout`` and ``statement_timeout``, recording it in the
   ledger in the same transaction: a failing migration leaves neither its changes nor its row;
4. when it applied any, runs ``platform.apply_masking()`` (data masking of the stack config) so
   that a table a migration created or changed is served masked from then on.

Files are checked here, before anything is rendered: names, versions without gaps or
duplicates, no transaction control and no psql meta-commands (the script owns both). A domain
that reads another domain's objects says so with a header line ``-- requires: <domain>``; the
runner applies domains in that order (otherwise by name).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final

from components.render.access import OWNER

MIGRATIONS_DIR: Final = Path(__file__).resolve().parents[2] / "migrations"
SCRIPT: Final = "migrate.psql"
LEDGER: Final = "platform.migration"
ADVISORY_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"pgplatform.migrations").digest()[:8], "big", signed=True
)
"""The session-level advisory lock every runner holds while it works (one runner at a time)."""
# A ConfigMap holds at most 1 MiB; keep room for metadata.
MAX_BUNDLE_BYTES: Final = 900 * 1024

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
_DOMAIN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_REQUIRES = re.compile(r"^--\s*requires:\s*(?P<domains>.+?)\s*$")
NO_TRANSACTION: Final = "-- pgplatform: no-transaction"
"""Leading comment line of a migration that must run outside a transaction block."""
_DURATION = re.compile(r"^\d+(ms|s|min|h)$")
_DOLLAR_QUOTED = re.compile(r"\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?\$(?P=tag)?\$", re.DOTALL)
_LINE_COMMENT = re.compile(r"--[^\n]*")
_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|ABORT|START\s+TRANSACTION|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)"
    r"\b[^;]*;",
    re.IGNORECASE | re.MULTILINE,
)


class MigrationError(ValueError):
    """A migration file or directory the runner would refuse; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class Migration:
    """One migration file of one domain."""

    domain: str
    version: int
    name: str
    text: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def label(self) -> str:
        """How messages and the ledger checks name it: ``content/0002_cms_client_policy.sql``."""
        return f"{self.domain}/{self.file_name}"

    @property
    def key(self) -> str:
        """Its ConfigMap key (no ``/`` allowed there): ``content.0002_cms_client_policy.sql``."""
        return f"{self.domain}.{self.file_name}"

    @cached_property
    def checksum(self) -> str:
        """sha256 of the file's bytes: what the ledger records and later runs compare."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @cached_property
    def header(self) -> tuple[str, ...]:
        """The leading comment lines (where ``requires`` and ``no-transaction`` are read)."""
        lines = []
        for line in self.text.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("--"):
                break
            lines.append(stripped)
        return tuple(lines)

    @cached_property
    def requires(self) -> tuple[str, ...]:
        """Domains named by ``-- requires:`` lines of the leading comment block."""
        found: list[str] = []
        for line in self.header:
            match = _REQUIRES.match(line)
            if match:
                found += [d.strip() for d in match.group("domains").split(",") if d.strip()]
        return tuple(found)

    @property
    def in_transaction(self) -> bool:
        """False for ``-- pgplatform: no-transaction`` (``CREATE INDEX CONCURRENTLY`` and such).

        Each statement then commits on its own and the ledger row follows the last one: a
        failure part-way leaves the earlier statements applied and the migration pending, so
        such a migration is written to be re-run (``IF NOT EXISTS``; an index whose concurrent
        build failed is dropped first with ``DROP INDEX CONCURRENTLY IF EXISTS``).
        """
        return NO_TRANSACTION not in self.header


def runs_in_transaction(text: str) -> bool:
    """What the runner does with a migration's text: wrap it in a transaction, or not."""
    return Migration(domain="x", version=1, name="x", text=text).in_transaction


def check_text(label: str, text: str) -> None:
    """Refuse what the runner owns: transaction control and psql meta-commands."""
    if not text.strip():
        raise MigrationError(f"{label}: empty file")
    code = _LINE_COMMENT.sub("", _DOLLAR_QUOTED.sub("$$", text))
    control = _TRANSACTION_CONTROL.search(code)
    if control:
        raise MigrationError(
            f"{label}: {control.group(1).upper()} found: each migration already runs in a "
            "transaction of its own; remove transaction control"
        )
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("\\"):
            raise MigrationError(
                f"{label}:{number}: psql meta-command {line.strip()!r}: migrations are plain SQL"
            )


def read_domain(domain: str, directory: Path) -> tuple[Migration, ...]:
    """The migrations of one domain directory, in version order, checked."""
    if not _DOMAIN.match(domain):
        raise MigrationError(f"migrations/{domain}: not a domain name ([a-z_][a-z0-9_]*)")
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        label = f"{domain}/{path.name}"
        match = _FILE.match(path.name)
        if match is None or not path.is_file():
            raise MigrationError(
                f"{label}: migrations are files named NNNN_<name>.sql "
                "(four digits, lowercase name), e.g. 0001_create_accounts.sql"
            )
        version = int(match.group("version"))
        if version == 0:
            raise MigrationError(f"{label}: versions start at 0001")
        if version in found:
            raise MigrationError(
                f"{label}: version {version:04d} is taken by {found[version].label}"
            )
        text = path.read_text(encoding="utf-8")
        check_text(label, text)
        found[version] = Migration(domain=domain, version=version, name=match["name"], text=text)
    ordered = tuple(found[v] for v in sorted(found))
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"{migration.label}: gap: version {expected:04d} of {domain} is missing "
                "(versions run 0001, 0002, ... without holes)"
            )
    return ordered


def available_domains(root: Path = MIGRATIONS_DIR) -> tuple[str, ...]:
    """Domains that have a migrations directory."""
    if not root.is_dir():
        return ()
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))


@dataclass(frozen=True, kw_only=True)
class MigrationPlan:
    """The migrations one stack applies, domains in apply order."""

    domains: tuple[str, ...]
    migrations: tuple[Migration, ...]
    owner: str = OWNER
    lock_wait: str = "10min"
    """How long a second runner waits for the first one's advisory lock."""
    lock_timeout: str = "10s"
    """Per migration: how long a statement waits for a lock held by the running APIs."""
    statement_timeout: str = "15min"
    """Per migration statement (a migration may raise it with ``SET LOCAL``)."""

    def __post_init__(self) -> None:
        for name in ("lock_wait", "lock_timeout", "statement_timeout"):
            if not _DURATION.match(getattr(self, name)):
                raise ValueError(f"MigrationPlan.{name}: e.g. '10s' or '15min'")
        if not _DOMAIN.match(self.owner):
            raise ValueError(f"MigrationPlan.owner: not a role name: {self.owner!r}")

    def of(self, domain: str) -> tuple[Migration, ...]:
        return tuple(m for m in self.migrations if m.domain == domain)


def _apply_order(requires: Mapping[str, set[str]]) -> tuple[str, ...]:
    """Domains so that each comes after those it requires; ties by name; cycles refused."""
    order: list[str] = []
    pending = dict(requires)
    while pending:
        ready = sorted(d for d, needs in pending.items() if not needs - set(order))
        if not ready:
            raise MigrationError(
                f"migrations: domains require each other in a cycle: {sorted(pending)}"
            )
        order.append(ready[0])
        del pending[ready[0]]
    return tuple(order)


def plan_migrations(
    stack_domains: Sequence[str],
    root: Path = MIGRATIONS_DIR,
    *,
    only: Collection[str] | None = None,
    **options: str,
) -> MigrationPlan:
    """The plan of a stack: every configured domain with a migrations directory.

    ``only`` narrows it to the domains of one database (a domain served from the CDC copies
    has its migrations applied there); a domain it requires may then live elsewhere.
    """
    wanted = set(stack_domains) if only is None else set(only) & set(stack_domains)
    domains = [d for d in available_domains(root) if d in wanted]
    per_domain = {d: read_domain(d, root / d) for d in domains}
    requires: dict[str, set[str]] = {}
    for domain, migrations in per_domain.items():
        needs: set[str] = set()
        for migration in migrations:
            for other in migration.requires:
                if other not in stack_domains:
                    raise MigrationError(
                        f"{migration.label}: requires domain {other!r}, which this stack does "
                        f"not configure (domains: {sorted(stack_domains)})"
                    )
                if other != domain:
                    needs.add(other)
        requires[domain] = needs & set(domains)
    order = _apply_order(requires)
    return MigrationPlan(
        domains=order,
        migrations=tuple(m for d in order for m in per_domain[d]),
        **options,
    )


def _literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _ledger_values(m: Migration) -> str:
    """``domain, version, name, checksum`` as SQL literals (names are checked identifiers)."""
    return f"{_literal(m.domain)}, {m.version}, {_literal(m.name)}, {_literal(m.checksum)}"


def _ledger_check_sql(plan: MigrationPlan) -> list[str]:
    """One DO block that refuses the whole run, naming every offending migration."""
    domains = ", ".join(_literal(d) for d in plan.domains) or "NULL"
    rows = ",\n".join(f"            ({_ledger_values(m)})" for m in plan.migrations)
    bundle = (
        f"        bundle (domain, version, name, checksum) AS (VALUES\n{rows}\n        ),"
        if rows
        else "        bundle (domain, version, name, checksum) AS ("
        "SELECT NULL::name, NULL::integer, NULL::text, NULL::text WHERE false),"
    )
    file_of = (
        "pg_catalog.format('%s/%s_%s.sql', {0}.domain, "
        "pg_catalog.lpad({0}.version::text, 4, '0'), {0}.name)"
    )
    ledger_file = file_of.format("l")
    bundle_file = file_of.format("b")
    return [
        "DO $ledger_check$",
        "DECLARE",
        "    problems text;",
        "BEGIN",
        "    WITH",
        bundle,
        "        ledger AS (",
        "            SELECT m.domain, m.version, m.name, m.checksum, m.applied_at",
        f"            FROM {LEDGER} m WHERE m.domain = ANY (ARRAY[{domains}]::name[])",
        "        ),",
        "        problem (line) AS (",
        f"            SELECT {ledger_file} || ': changed since it was applied on '",
        "                || l.applied_at::text || ' (checksum ' || pg_catalog.left(l.checksum, 12)",
        "                || ', file ' || pg_catalog.left(b.checksum, 12)",
        "                || '): an applied migration is never edited; add a new one'",
        "            FROM ledger l JOIN bundle b USING (domain, version)",
        "            WHERE b.name = l.name AND b.checksum <> l.checksum",
        "            UNION ALL",
        f"            SELECT {ledger_file} || ': applied as version ' || l.version",
        "                || ', the bundle has it as ' || " + bundle_file + " || ' (reordered)'",
        "            FROM ledger l JOIN bundle b ON b.domain = l.domain AND b.name = l.name",
        "            WHERE b.version <> l.version",
        "            UNION ALL",
        f"            SELECT {ledger_file} || ': applied, but the bundle has '",
        "                || CASE WHEN b.name IS NULL THEN 'no version ' || l.version",
        "                        ELSE " + bundle_file + " END",
        "                || ' in its place (renamed, removed or reordered)'",
        "            FROM ledger l LEFT JOIN bundle b USING (domain, version)",
        "            WHERE (b.name IS NULL OR b.name <> l.name)",
        "              AND NOT EXISTS (SELECT FROM bundle o",
        "                              WHERE o.domain = l.domain AND o.name = l.name)",
        "            UNION ALL",
        f"            SELECT {bundle_file} || ': not applied, but a later version is ('",
        "                || (SELECT pg_catalog.max(a.version) FROM ledger a",
        "                    WHERE a.domain = b.domain)::text || '): gap or reordering'",
        "            FROM bundle b",
        "            WHERE NOT EXISTS (SELECT FROM ledger l",
        "                              WHERE l.domain = b.domain AND l.version = b.version)",
        "              AND EXISTS (SELECT FROM ledger l",
        "                          WHERE l.domain = b.domain AND l.version > b.version)",
        "        )",
        "    SELECT pg_catalog.string_agg(p.line, E'\\n' ORDER BY p.line) INTO problems",
        "    FROM problem p;",
        "    IF problems IS NOT NULL THEN",
        "        RAISE EXCEPTION USING",
        "            ERRCODE = 'data_exception',",
        "            MESSAGE = 'migrations refused, nothing applied:' || E'\\n' || problems,",
        "            HINT = 'The ledger platform.migration records what was applied; '",
        "                || 'see README, \"Writing a migration\".';",
        "    END IF;",
        "END",
        "$ledger_check$;",
    ]


def _apply_sql(
    plan: MigrationPlan, migration: Migration, after_each: Sequence[str] = ()
) -> list[str]:
    m = migration
    local = "LOCAL " if m.in_transaction else ""
    return [
        f"SELECT NOT EXISTS (SELECT FROM {LEDGER} m WHERE m.domain = {_literal(m.domain)}"  # noqa: S608 - checked names
        f" AND m.version = {m.version}) AS pending \\gset",
        "\\if :pending",
        f"\\echo {m.label}: applying" + ("" if m.in_transaction else " (no transaction)"),
        "RESET ALL;",
        "RESET ROLE;",
        "SET client_min_messages = warning;",
        *(["BEGIN;"] if m.in_transaction else []),
        f"SET {local}lock_timeout = '{plan.lock_timeout}';",
        f"SET {local}statement_timeout = '{plan.statement_timeout}';",
        f'SET {local}ROLE "{plan.owner}";',
        f"\\ir {m.key}",
        "RESET ROLE;",
        *after_each,
        f"INSERT INTO {LEDGER} (domain, version, name, checksum)",
        f"VALUES ({_ledger_values(m)});",
        *(["COMMIT;"] if m.in_transaction else []),
        "\\set applied_any true",
        f"\\echo {m.label}: applied",
        "\\endif",
    ]


def _masking_sql(plan: MigrationPlan) -> list[str]:
    """After a run that applied something: the masking rules onto what it created or changed.

    ``platform.apply_masking()`` (db/081_masking_apply.sql) moves a masked table behind its view
    and rebuilds a view whose table changed; the baseline Job runs it too, but before the
    migrations. It runs as the database owner (the session's role), in a transaction of its own.
    """
    return [
        "\\if :applied_any",
        "SELECT pg_catalog.to_regprocedure('platform.apply_masking()') IS NOT NULL"
        " AS has_masking \\gset",
        "\\if :has_masking",
        "RESET ALL;",
        "RESET ROLE;",
        "SET client_min_messages = warning;",
        "BEGIN;",
        f"SET LOCAL lock_timeout = '{plan.lock_timeout}';",
        f"SET LOCAL statement_timeout = '{plan.statement_timeout}';",
        "SELECT platform.apply_masking() IS NULL AS masked \\gset",
        "COMMIT;",
        "\\echo masking rules applied",
        "\\endif",
        "\\endif",
    ]


def render_migrate_script(plan: MigrationPlan, *, after_each: Sequence[str] = ()) -> str:
    """``migrate.psql``: lock, check the ledger, apply what is pending (``psql -X -f``).

    ``after_each``: SQL lines run after each migration, in its transaction, as the database
    owner. The copy database passes its seal (``copy_database.seal_statements``): no table a
    migration creates there is ever committed without row level security.
    """
    lines = [
        "-- Domain migrations of this stack (rendered by pgplatform): psql -X -f migrate.psql",
        f"-- Domains in apply order: {', '.join(plan.domains) or '(none)'}.",
        "\\set ON_ERROR_STOP on",
        "\\set QUIET on",
        "SET client_min_messages = warning;",
        "-- One runner at a time: a second Job waits here for the first, then finds nothing to do.",
        f"SET lock_timeout = '{plan.lock_wait}';",
        f"SELECT pg_catalog.pg_advisory_lock({ADVISORY_LOCK_KEY}) IS NULL AS unlocked \\gset",
        "RESET lock_timeout;",
        "-- Migrations run as the schema owner; the database owner may make itself a member.",
        f"SELECT pg_catalog.pg_has_role('{plan.owner}', 'MEMBER') AS owner_member \\gset",
        "\\if :owner_member",
        "\\else",
        f'GRANT "{plan.owner}" TO CURRENT_USER;',
        "\\endif",
        "-- The whole bundle is checked against the ledger before anything is applied.",
        *_ledger_check_sql(plan),
    ]
    lines.append("\\set applied_any false")
    for migration in plan.migrations:
        lines += _apply_sql(plan, migration, after_each)
    lines += _masking_sql(plan)
    lines += [
        f"SELECT pg_catalog.pg_advisory_unlock({ADVISORY_LOCK_KEY}) AS unlocked \\gset",
        f"\\echo migrations current: {len(plan.migrations)} in {len(plan.domains)} domain(s)",
        "",
    ]
    return "\n".join(lines)


def job_bundle(plan: MigrationPlan, *, after_each: Sequence[str] = ()) -> dict[str, str]:
    """ConfigMap data of the migrations Job: the script and every migration it includes."""
    bundle = {SCRIPT: render_migrate_script(plan, after_each=after_each)}
    bundle.update((m.key, m.text) for m in plan.migrations)
    size = sum(len(k) + len(v.encode("utf-8")) for k, v in bundle.items())
    if size > MAX_BUNDLE_BYTES:
        raise MigrationError(
            f"migrations: the bundle is {size} bytes, more than a ConfigMap carries "
            f"({MAX_BUNDLE_BYTES}); squash old migrations of a domain into a new baseline"
        )
    return dict(sorted(bundle.items()))


def write_bundle(bundle: Mapping[str, str], directory: Path) -> Path:
    """Write the bundle as the Job's ConfigMap mount would show it; returns the script path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in bundle.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory / SCRIPT
