"""Change data capture to the analytics database on real PostgreSQL 15 clusters.

The publisher is the staging database as the platform builds it (access plan, baseline, the
example domains' ``migrations/``: RLS forced, audit triggers). The rendered files run as
their runners run them: ``publisher.psql`` and ``apply.sh`` through ``psql`` as the admin role
(a CREATEROLE database owner, not a superuser, as CloudNativePG creates it), ``slot.sql`` as the
publication role. The subscription is created the way CloudNativePG's ``Subscription`` controller
creates it: ``CREATE SUBSCRIPTION`` with the rendered parameters, connecting with the rendered
``externalClusters`` entry.

Two clusters prove the pipeline (changes arrive, excluded columns and rows never do, a publisher
restart is survived); one cluster proves the chosen topology (the analytics database next to the
application database, which only works with a separately created slot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from components.render import cdc
from tests.integration.cdc_setup import (
    ADMIN,
    ADMIN_PASSWORD,
    CDC_PASSWORD,
    PLAN,
    TARGET,
    job_files,
    prepare_publisher,
    prepare_target,
    psql,
    publisher_conninfo,
    rows,
    run_job_script,
    start_same_cluster_pipeline,
    subscribe,
    wait_for,
    write,
    write_files,
)
from tests.integration.pg import PgCluster, give_to_server_user, running_cluster
from tests.integration.test_baseline_sql import DATABASE

pytestmark = pytest.mark.integration


@dataclass
class Pipeline:
    publisher: PgCluster
    subscriber: PgCluster


@pytest.fixture(scope="module")
def pipeline(
    rendered_stack: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Publisher (TLS, wal_level logical) and subscriber clusters with the pipeline running."""
    files = write_files(tmp_path_factory.mktemp("cdc"), cdc.job_files(PLAN))
    with (
        running_cluster(tls=True, settings={"wal_level": "logical"}) as publisher,
        running_cluster(settings={"wal_retrieve_retry_interval": "'500ms'"}) as subscriber,
    ):
        prepare_publisher(publisher, rendered_stack("staging"))
        for name in (cdc.PUBLISHER_FILE, cdc.SLOT_FILE, cdc.SUBSCRIBER_FILE):
            give_to_server_user(files / name)
        applied = psql(publisher, DATABASE, files / cdc.PUBLISHER_FILE)
        assert applied.returncode == 0, applied.stderr
        slot = psql(
            publisher, DATABASE, files / cdc.SLOT_FILE, user=cdc.ROLE, password=CDC_PASSWORD
        )
        assert slot.returncode == 0, slot.stderr
        prepare_target(subscriber)
        target = psql(subscriber, TARGET, files / cdc.SUBSCRIBER_FILE)
        assert target.returncode == 0, target.stderr
        subscribe(subscriber, publisher)
        wait_for(
            lambda: rows(subscriber, "SELECT count(*) FROM identity_private.accounts") == [(3,)],
            "the initial copy",
        )
        yield Pipeline(publisher, subscriber)


def test_initial_copy_brings_existing_rows_without_personal_columns(pipeline: Pipeline) -> None:
    columns = rows(
        pipeline.subscriber,
        "SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns "
        "WHERE table_schema IN ('identity_private', 'content') ORDER BY 1, 2",
    )
    assert columns == [
        ("content.articles", "id"),
        ("content.articles", "published"),
        ("content.articles", "title"),
        ("content.articles", "updated_at"),
        ("identity_private.accounts", "created_at"),
        ("identity_private.accounts", "id"),
    ]
    source = rows(pipeline.publisher, "SELECT id FROM identity.accounts ORDER BY id", DATABASE)
    assert (
        rows(pipeline.subscriber, "SELECT id FROM identity_private.accounts ORDER BY id") == source
    )


def test_inserts_updates_and_deletes_arrive(pipeline: Pipeline) -> None:
    pub, sub = pipeline.publisher, pipeline.subscriber
    write(
        pub,
        "INSERT INTO identity.accounts (sub, display_name, email) "
        "VALUES ('cdc-1', 'Ada Lovelace', 'ada@example.com')",
    )
    [(new_id,)] = rows(pub, "SELECT id FROM identity.accounts WHERE sub = 'cdc-1'", DATABASE)
    wait_for(
        lambda: (
            rows(sub, f"SELECT count(*) FROM identity_private.accounts WHERE id = {new_id}")
            == [(1,)]
        ),
        "the insert",
    )
    write(
        pub,
        "UPDATE identity.accounts SET created_at = '2020-01-02T03:04:05Z', "
        "email = 'ada@elsewhere.example' WHERE sub = 'cdc-1'",
    )
    wait_for(
        lambda: (
            rows(
                sub,
                "SELECT created_at = '2020-01-02T03:04:05Z' FROM identity_private.accounts "
                f"WHERE id = {new_id}",
            )
            == [(True,)]
        ),
        "the update",
    )
    write(pub, "DELETE FROM identity.accounts WHERE sub = 'cdc-1'")
    wait_for(
        lambda: (
            rows(sub, f"SELECT count(*) FROM identity_private.accounts WHERE id = {new_id}")
            == [(0,)]
        ),
        "the delete",
    )


def test_row_filter_publishes_only_published_articles(pipeline: Pipeline) -> None:
    pub, sub = pipeline.publisher, pipeline.subscriber
    write(
        pub,
        "INSERT INTO content.articles (author_sub, title, published) "
        "VALUES ('e-1', 'cdc draft', false), ('e-1', 'cdc news', true)",
    )
    wait_for(
        lambda: (
            rows(sub, "SELECT title FROM content.articles WHERE title LIKE 'cdc %'")
            == [("cdc news",)]
        ),
        "the published article",
    )
    # A draft becoming public arrives (as an insert); a retracted article leaves (a delete).
    write(
        pub,
        "UPDATE content.articles SET published = true WHERE title = 'cdc draft'",
        "UPDATE content.articles SET published = false WHERE title = 'cdc news'",
    )
    wait_for(
        lambda: (
            rows(sub, "SELECT title FROM content.articles WHERE title LIKE 'cdc %'")
            == [("cdc draft",)]
        ),
        "the changed visibility",
    )
    source_drafts = rows(pub, "SELECT count(*) FROM content.articles WHERE NOT published", DATABASE)
    assert source_drafts[0][0] >= 1
    assert rows(sub, "SELECT count(*) FROM content.articles WHERE NOT published") == [(0,)]


def test_excluded_columns_never_reach_the_subscriber(pipeline: Pipeline) -> None:
    """Not in the target tables, not in its WAL stream: the subscriber's catalog and data hold
    no personal value, and the publication role cannot read one either."""
    pub, sub = pipeline.publisher, pipeline.subscriber
    write(
        pub,
        "INSERT INTO identity.accounts (sub, display_name, email) "
        "VALUES ('cdc-secret', 'Grace Hopper', 'grace@example.com')",
    )
    [(new_id,)] = rows(pub, "SELECT id FROM identity.accounts WHERE sub = 'cdc-secret'", DATABASE)
    wait_for(
        lambda: (
            rows(sub, f"SELECT count(*) FROM identity_private.accounts WHERE id = {new_id}")
            == [(1,)]
        ),
        "the insert",
    )
    with sub.connect(TARGET) as conn:
        dump = conn.execute(
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM identity_private.accounts) t"
        ).fetchone()
    assert dump is not None
    for personal in ("Grace Hopper", "grace@example.com", "cdc-secret", "Early Bird"):
        assert personal not in (dump[0] or "")
    published = rows(
        pub,
        "SELECT attnames FROM pg_publication_tables WHERE pubname = 'analytics_cdc' "
        "AND schemaname = 'identity_private'",
        DATABASE,
    )
    assert published == [(["id", "created_at"],)]
    with pub.connect_as(cdc.ROLE, CDC_PASSWORD, dbname=DATABASE) as conn:
        assert (
            conn.execute("SELECT count(id) FROM identity_private.accounts").fetchone() is not None
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT email FROM identity_private.accounts")


def test_subscription_survives_a_publisher_restart(pipeline: Pipeline) -> None:
    pub, sub = pipeline.publisher, pipeline.subscriber
    pub.restart("immediate")
    write(
        pub,
        "INSERT INTO identity.accounts (sub, display_name) VALUES ('after-restart', 'Later')",
    )
    [(new_id,)] = rows(
        pub, "SELECT id FROM identity.accounts WHERE sub = 'after-restart'", DATABASE
    )
    wait_for(
        lambda: (
            rows(sub, f"SELECT count(*) FROM identity_private.accounts WHERE id = {new_id}")
            == [(1,)]
        ),
        "a change written after the restart",
    )
    active = rows(
        pub, "SELECT active FROM pg_replication_slots WHERE slot_name = 'analytics_cdc'", DATABASE
    )
    assert active == [(True,)]


def test_applying_the_publication_again_changes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    files = write_files(tmp_path, cdc.job_files(PLAN))
    give_to_server_user(files / cdc.PUBLISHER_FILE)
    again = psql(pipeline.publisher, DATABASE, files / cdc.PUBLISHER_FILE)
    assert again.returncode == 0, again.stderr
    members = rows(
        pipeline.publisher,
        f"SELECT pg_has_role('{ADMIN}', 'pgplatform_owner', 'MEMBER')",
        DATABASE,
    )
    assert members == [(False,)], "the admin keeps no membership in the tables' owner"


def test_a_publication_that_would_break_writes_is_never_committed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The key check and PostgreSQL's own replica identity check run before COMMIT."""
    pub = pipeline.publisher
    wrong_key = cdc.CdcPlan(
        source_database=DATABASE,
        target_database=TARGET,
        tables=(
            cdc.CdcTable(
                schema="identity_private",
                name="accounts",
                config_name="identity.accounts",
                key=("id", "created_at"),
                columns=(("id", "bigint"), ("created_at", "timestamptz")),
            ),
        ),
    )
    file = write_files(tmp_path / "key", {"p.psql": cdc.render_publisher_psql(wrong_key)})
    give_to_server_user(file / "p.psql")
    failed = psql(pub, DATABASE, file / "p.psql")
    assert failed.returncode != 0
    assert "pgplatform:cdc.tables.identity.accounts: key" in failed.stderr

    # A filter on a column outside the replica identity (what the settings refuse) is caught by
    # PostgreSQL's own check, run before COMMIT.
    [table] = [t for t in PLAN.tables if t.qualified == "identity_private.accounts"]
    table_copy = cdc.CdcTable(**table.__dict__)
    object.__setattr__(table_copy, "row_filter", "created_at IS NOT NULL")
    plan = cdc.CdcPlan(source_database=DATABASE, target_database=TARGET, tables=(table_copy,))
    file = write_files(tmp_path / "filter", {"p.psql": cdc.render_publisher_psql(plan)})
    give_to_server_user(file / "p.psql")
    failed = psql(pub, DATABASE, file / "p.psql")
    assert failed.returncode != 0
    assert "this publication would break writes" in failed.stderr
    assert "pgplatform:cdc.tables.identity.accounts" in failed.stderr
    # The publication is the one applied before, and the API's writes still work.
    tables = rows(
        pub,
        "SELECT schemaname || '.' || tablename, rowfilter FROM pg_publication_tables "
        "WHERE pubname = 'analytics_cdc' ORDER BY 1",
        DATABASE,
    )
    assert tables == [("content.articles", "published"), ("identity_private.accounts", None)]
    write(pub, "UPDATE identity.accounts SET email = email")


def test_analytics_database_in_the_same_cluster(
    rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    """The deployed topology: the Job's script, then the subscription on the same cluster with
    the slot the script made (``create_slot = false``)."""
    files = job_files(tmp_path / "job")
    with running_cluster(tls=True, settings={"wal_level": "logical"}) as cluster:
        start_same_cluster_pipeline(cluster, rendered_stack("staging"), files)
        write(cluster, "DELETE FROM identity.accounts WHERE sub = 'before-1'")
        wait_for(
            lambda: rows(cluster, "SELECT count(*) FROM identity_private.accounts") == [(2,)],
            "a delete in the same cluster",
        )
        again = run_job_script(cluster, files)
        assert again.returncode == 0, again.stderr


def test_resync_after_the_slot_is_lost(pipeline: Pipeline, tmp_path: Path) -> None:
    """What a failover does to a PostgreSQL 15 logical slot (the new primary has none), and the
    runbook's way back: pause, make the slot again, drop and refill the subscription."""
    pub, sub = pipeline.publisher, pipeline.subscriber
    files = write_files(tmp_path, cdc.job_files(PLAN))
    for name in files.iterdir():
        give_to_server_user(name)
    write(pub, "INSERT INTO identity.accounts (sub, display_name) VALUES ('gap-0', 'Before')")
    wait_for(
        lambda: (
            rows(sub, "SELECT count(*) FROM identity_private.accounts")
            == rows(pub, "SELECT count(*) FROM identity.accounts", DATABASE)
        ),
        "the subscriber to catch up",
    )
    # The runbook runs these with `kubectl cnpg psql`: the superuser that owns the subscription.
    paused = psql(
        sub, TARGET, files / cdc.PAUSE_FILE, user=sub.superuser, password=sub.superuser_password
    )
    assert paused.returncode == 0, paused.stderr
    wait_for(
        lambda: rows(pub, "SELECT active FROM pg_replication_slots", DATABASE) == [(False,)],
        "the slot to be released",
    )
    with pub.connect(DATABASE) as conn:
        conn.execute(f"SELECT pg_drop_replication_slot('{cdc.SLOT}')")
    # Changes while the slot is missing: no slot keeps them for the subscriber.
    write(
        pub,
        "INSERT INTO identity.accounts (sub, display_name) VALUES ('gap-1', 'During')",
        "DELETE FROM identity.accounts WHERE sub = 'gap-0'",
        "UPDATE content.articles SET published = NOT published",
    )
    # Step 2: the Job again (the publication, then the slot as the publication role).
    rerun = psql(pub, DATABASE, files / cdc.PUBLISHER_FILE)
    assert rerun.returncode == 0, rerun.stderr
    rerun = psql(pub, DATABASE, files / cdc.SLOT_FILE, user=cdc.ROLE, password=CDC_PASSWORD)
    assert rerun.returncode == 0, rerun.stderr
    write(pub, "INSERT INTO identity.accounts (sub, display_name) VALUES ('gap-2', 'After')")
    [(gap_id,)] = rows(pub, "SELECT id FROM identity.accounts WHERE sub = 'gap-1'", DATABASE)
    assert rows(sub, f"SELECT count(*) FROM identity_private.accounts WHERE id = {gap_id}") == [
        (0,)
    ]
    resynced = psql(
        sub, TARGET, files / cdc.RESYNC_FILE, user=sub.superuser, password=sub.superuser_password
    )
    assert resynced.returncode == 0, resynced.stderr
    subscribe(sub, pub)  # what CloudNativePG's Subscription does once the subscription is gone

    def same() -> bool:
        accounts = "SELECT id, created_at FROM identity.accounts ORDER BY id"
        articles = "SELECT id, title FROM content.articles WHERE published ORDER BY id"
        target = accounts.replace("identity.accounts", "identity_private.accounts")
        return rows(sub, target) == rows(pub, accounts, DATABASE) and rows(
            sub, articles.replace(" WHERE published", "")
        ) == rows(pub, articles, DATABASE)

    wait_for(same, "the analytics database to equal the published rows again")


def test_external_mode_files_applied_in_order(
    rendered_stack: Callable[[str], Path], tmp_path: Path
) -> None:
    """Mode external: the five files, each as the role the docs name, the secrets given as psql
    variables; then changes arrive as in mode cnpg."""
    files = write_files(tmp_path / "external", cdc.external_files(PLAN))
    for path in files.iterdir():
        give_to_server_user(path)
    with (
        running_cluster(tls=True, settings={"wal_level": "logical"}) as pub,
        running_cluster(settings={"wal_retrieve_retry_interval": "'500ms'"}) as sub,
    ):
        prepare_publisher(pub, rendered_stack("staging"), managed_role=False)
        prepare_target(sub)
        steps = [
            (pub, DATABASE, "1-role.psql", pub.superuser, pub.superuser_password),
            (pub, DATABASE, "2-publisher.psql", ADMIN, ADMIN_PASSWORD),
            (pub, DATABASE, "3-slot.sql", cdc.ROLE, CDC_PASSWORD),
            (sub, TARGET, "4-subscriber.sql", ADMIN, ADMIN_PASSWORD),
            (sub, TARGET, "5-subscription.psql", sub.superuser, sub.superuser_password),
        ]
        variables = {"password": CDC_PASSWORD, "publisher": publisher_conninfo(sub, pub)}
        for cluster, dbname, name, user, password in steps:
            done = psql(
                cluster, dbname, files / name, user=user, password=password, variables=variables
            )
            assert done.returncode == 0, f"{name}: {done.stderr}"
        wait_for(
            lambda: rows(sub, "SELECT count(*) FROM identity_private.accounts") == [(3,)],
            "the initial copy",
        )
        write(pub, "INSERT INTO identity.accounts (sub, display_name) VALUES ('ext-1', 'E')")
        wait_for(
            lambda: rows(sub, "SELECT count(*) FROM identity_private.accounts") == [(4,)],
            "an insert through the external-mode subscription",
        )
        # Applying the role and subscription files again updates both in place.
        for cluster, dbname, name, user, password in (steps[0], steps[4]):
            again = psql(
                cluster, dbname, files / name, user=user, password=password, variables=variables
            )
            assert again.returncode == 0, f"{name}: {again.stderr}"
