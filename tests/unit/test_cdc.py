"""Change data capture: config errors name their key, what each mode deploys, what stays secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from components.render import cdc
from components.settings import SettingsError, decode_config_value, parse_settings
from tests.conftest import run_program, stack_config
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

ACCOUNTS = {"key": ["id"], "columns": {"id": "bigint", "created_at": "timestamptz"}}


def staging_raw(**cdc_keys: Any) -> dict[str, Any]:
    config, _ = stack_config("staging")
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    raw["cdc"] = {**raw.get("cdc", {}), **cdc_keys}
    return raw


def problems(raw: dict[str, Any], stack: str = "staging") -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw)
    return {p.path: p.message for p in caught.value.problems}


@pytest.mark.parametrize(
    ("tables", "key", "fragment"),
    [
        ({"accounts": ACCOUNTS}, "pgplatform:cdc.tables.accounts", "'schema.table'"),
        ({"Identity.Accounts": ACCOUNTS}, "pgplatform:cdc.tables.Identity.Accounts", "lower case"),
        ({"ledger.invoices": ACCOUNTS}, "pgplatform:cdc.tables.ledger.invoices", "domain's"),
        (
            {"identity.accounts": {**ACCOUNTS, "key": ["sub"]}},
            "pgplatform:cdc.tables.identity.accounts.key",
            "must be in columns",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "key": []}},
            "pgplatform:cdc.tables.identity.accounts.key",
            "at least 1",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "columns": {}}},
            "pgplatform:cdc.tables.identity.accounts.columns",
            "at least 1",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "columns": {"id": "bigint; DROP TABLE x"}}},
            "pgplatform:cdc.tables.identity.accounts.columns.id",
            "not a column type",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "rowFilter": "email LIKE '%@example.com'"}},
            "pgplatform:cdc.tables.identity.accounts.rowFilter",
            "replica identity",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "rowFilter": "id > 0; DELETE FROM x"}},
            "pgplatform:cdc.tables.identity.accounts.rowFilter",
            "one expression",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "rowFilter": "id IN (SELECT 1)"}},
            "pgplatform:cdc.tables.identity.accounts.rowFilter",
            "subqueries",
        ),
        (
            {"identity.accounts": {**ACCOUNTS, "where": "id > 0"}},
            "pgplatform:cdc.tables.identity.accounts.where",
            "unknown key",
        ),
    ],
)
def test_bad_tables_name_the_key(tables: dict[str, Any], key: str, fragment: str) -> None:
    found = problems(staging_raw(tables=tables))
    assert key in found, found
    assert fragment in found[key]


def test_the_analytics_database_is_another_database() -> None:
    found = problems(staging_raw(database="app"))
    assert "must differ from postgres.database" in found["pgplatform:cdc.database"]


def test_retained_wal_must_fit_the_volume() -> None:
    found = problems(staging_raw(maxSlotWalKeepSize="15Gi"))
    assert "half of postgres.storageSize (20Gi)" in found["pgplatform:cdc.maxSlotWalKeepSize"]


def test_filters_on_key_columns_and_literals_pass() -> None:
    tables = {
        "identity.accounts": {**ACCOUNTS, "rowFilter": "id > 1000 AND id <> 42"},
        "content.articles": {
            "key": ["id", "published"],
            "columns": {"id": "bigint", "published": "boolean", "title": "text"},
            "rowFilter": "published IS TRUE AND id::text <> 'x published'",
        },
    }
    settings = parse_settings("staging", staging_raw(tables=tables))
    assert settings.cdc.tables["content.articles"].key == ["id", "published"]


def test_filter_columns_ignore_literals_casts_and_functions() -> None:
    assert cdc.filter_columns("lower(name) = 'O''Brien email' AND id::bigint > 3") == {
        "name",
        "id",
    }


def objects(mocks: RecordingMocks, kind: str) -> list[dict[str, Any]]:
    return [r.inputs for r in mocks.kubernetes() if r.type.endswith(f":{kind}")]


def test_staging_deploys_the_pipeline_in_its_cluster(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    [cluster] = objects(mocks, "Cluster")
    spec = cluster["spec"]
    parameters = spec["postgresql"]["parameters"]
    assert parameters["wal_level"] == "logical"
    assert parameters["max_slot_wal_keep_size"] == "5120MB"
    [role] = [r for r in spec["managed"]["roles"] if r["name"] == cdc.ROLE]
    assert (role["replication"], role["login"]) == (True, True)
    assert [role[k] for k in ("superuser", "bypassrls", "createrole", "inherit")] == [False] * 4
    [publisher] = spec["externalClusters"]
    assert publisher["name"] == cdc.EXTERNAL_CLUSTER
    assert publisher["connectionParameters"]["host"].startswith("postgres-db-rw.")
    assert publisher["connectionParameters"]["sslmode"] == "verify-full"
    assert publisher["password"]["name"] == role["passwordSecret"]["name"]
    assert publisher["sslRootCert"] == {"name": "postgres-db-ca", "key": "ca.crt"}

    [database] = objects(mocks, "Database")
    assert database["spec"]["name"] == "analytics"
    assert database["spec"]["databaseReclaimPolicy"] == "retain"
    [subscription] = objects(mocks, "Subscription")
    sub = subscription["spec"]
    assert sub["externalClusterName"] == publisher["name"]
    assert (sub["dbname"], sub["publicationDBName"]) == ("analytics", "app")
    # The slot is made by the Job: a subscription cannot create one on its own cluster.
    assert sub["parameters"]["create_slot"] == "false"
    assert sub["parameters"]["slot_name"] == cdc.SLOT


def test_the_subscription_waits_for_the_job_and_the_job_for_the_baseline(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    by_urn = {r.urn: r for r in mocks.resources}
    [subscription] = [r for r in mocks.resources if r.type.endswith(":Subscription")]
    assert any(by_urn[d].name.startswith("cdc-job-") for d in subscription.dependencies)
    [component] = [r for r in mocks.resources if r.type == "pgplatform:index:CdcPipeline"]
    assert any(by_urn[d].name.startswith("sql-baseline-job-") for d in component.dependencies)


def test_the_password_is_referenced_never_written(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    [job] = [
        j
        for j in objects(mocks, "Job")
        if j["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "cdc"
    ]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "value" not in env["CDC_PASSWORD"]
    assert env["CDC_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    [config] = [c for c in objects(mocks, "ConfigMap") if cdc.JOB_SCRIPT in c.get("data", {})]
    assert "PASSWORD '" not in json.dumps(config["data"])


def test_prod_without_tables_changes_nothing(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "prod")
    [cluster] = objects(mocks, "Cluster")
    assert "wal_level" not in cluster["spec"]["postgresql"]["parameters"]
    assert "externalClusters" not in cluster["spec"]
    assert not objects(mocks, "Subscription")
    assert not objects(mocks, "Database")
    assert not [r for r in mocks.resources if r.type == "pgplatform:index:CdcPipeline"]


def test_external_mode_renders_the_sql_to_apply(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    config, secrets = stack_config("local")
    config = {
        **config,
        "pgplatform:postgresAdminPassword": "admin-password-for-the-render",
        "pgplatform:cdc": json.dumps({"tables": {"identity.accounts": ACCOUNTS}}),
    }
    mocks = run_program(
        pulumi_mocks, "local", config, [*secrets, "pgplatform:postgresAdminPassword"]
    )
    assert not objects(mocks, "Subscription")
    assert not objects(mocks, "Database")
    [sql_map] = [c for c in objects(mocks, "ConfigMap") if "2-publisher.psql" in c.get("data", {})]
    assert sorted(sql_map["data"]) == [
        "1-role.psql",
        "2-publisher.psql",
        "3-slot.sql",
        "4-subscriber.sql",
        "5-subscription.psql",
        "pause.sql",
        "resync.sql",
    ]
    assert (
        "CREATE SUBSCRIPTION analytics_cdc CONNECTION :'publisher'"
        in (sql_map["data"]["5-subscription.psql"])
    )
    assert not [j for j in objects(mocks, "Job") if "cdc" in json.dumps(j["metadata"])]


def test_publication_sql_names_exactly_the_configured_columns_and_rows() -> None:
    plan = cdc.CdcPlan(
        source_database="app",
        target_database="analytics",
        tables=(
            cdc.CdcTable(
                schema="content",
                name="articles",
                key=("id", "published"),
                columns=(("id", "bigint"), ("published", "boolean"), ("title", "text")),
                row_filter="published",
            ),
        ),
    )
    text = cdc.render_publisher_psql(plan)
    assert "TABLE content.articles (id, published, title) WHERE (published);" in text
    assert "GRANT SELECT (id, published, title) ON content.articles TO cdc_publisher;" in text
    assert "EXPLAIN DELETE FROM content.articles" in text
    assert text.index("EXPLAIN DELETE") < text.index("COMMIT;")
    target = cdc.render_subscriber_sql(plan)
    assert "PRIMARY KEY (id, published)" in target


def test_plan_refuses_what_settings_refuse() -> None:
    with pytest.raises(ValueError, match="replica identity"):
        cdc.CdcTable(
            schema="identity",
            name="accounts",
            key=("id",),
            columns=(("id", "bigint"), ("email", "text")),
            row_filter="email <> ''",
        )
    with pytest.raises(ValueError, match="must differ"):
        cdc.CdcPlan(source_database="app", target_database="app", tables=())
