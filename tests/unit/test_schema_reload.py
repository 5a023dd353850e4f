"""Every PostgREST pod reloads its schema cache after DDL: the sidecar as rendered per stack."""

from __future__ import annotations

from typing import Any

import pytest

from components import inputs
from components.render import domain_api as render
from components.render.postgrest import (
    DB_URI_ENV,
    PGPASSWORD_ENV,
    SCHEMA_POLL_ENV,
    db_uri,
    render_postgrest_conf,
    schema_reload_script,
)
from components.settings import StackSettings
from tests.conftest import STACKS, api_database, stack_settings

pytestmark = pytest.mark.unit


def pod(s: StackSettings, domain: str) -> dict[str, Any]:
    body = render.deployment_body(
        inputs.domain_api_spec(s, domain, api_database(s, domain)),
        conf=inputs.postgrest_conf_input(s, domain, api_database(s, domain)),
        config_map="cm",
        service_account="sa",
        secret_name=f"{render.consumer_name(domain)}-secrets",
        conf_checksum="0" * 64,
        secrets_checksum="f" * 64,
    )
    return dict(body["spec"]["template"]["spec"])


@pytest.mark.parametrize("stack", STACKS)
def test_every_api_pod_runs_the_schema_reloader(stack: str) -> None:
    s = stack_settings(stack)
    for domain in s.domains:
        spec = pod(s, domain)
        conf = inputs.postgrest_conf_input(s, domain, api_database(s, domain))
        (reloader,) = [c for c in spec["containers"] if c["name"] == render.SCHEMA_RELOADER]
        assert reloader["command"] == ["sh", "-c", schema_reload_script((conf.schema,))]
        env = {e["name"]: e for e in reloader["env"]}
        # PostgREST's own connection: the db-uri of its postgrest.conf and its password key.
        assert env[DB_URI_ENV]["value"] == db_uri(conf)
        assert f'db-uri = "{db_uri(conf)}"' in render_postgrest_conf(conf)
        postgrest = next(c for c in spec["containers"] if c["name"] == "postgrest")
        assert env[PGPASSWORD_ENV] == next(
            e for e in postgrest["env"] if e["name"] == PGPASSWORD_ENV
        )
        assert env[SCHEMA_POLL_ENV]["value"] == "10"
        # It signals PostgREST: one process namespace, one UID.
        assert spec["shareProcessNamespace"] is True
        assert reloader["securityContext"]["runAsUser"] == postgrest["securityContext"]["runAsUser"]


def test_script_polls_the_schema_version_and_sends_sigusr1() -> None:
    script = schema_reload_script(("content",))
    assert "SELECT platform.schema_version('content')" in script
    assert 'kill -USR1 "$pid"' in script
    assert "target='postgrest'" in script
    assert 'psql -X -A -t -q -v ON_ERROR_STOP=1 -d "$DB_URI"' in script


@pytest.mark.parametrize(
    ("schemas", "message"),
    [
        ((), "non-empty tuple"),
        (("Content",), "lower-case SQL identifier"),
        (("x'; DROP TABLE t; --",), "lower-case SQL identifier"),
    ],
)
def test_script_refuses_bad_schemas(schemas: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schema_reload_script(schemas)


def test_poll_interval_is_bounded() -> None:
    s = stack_settings("staging")
    spec = inputs.domain_api_spec(s, "identity")
    import dataclasses

    with pytest.raises(ValueError, match="schema_poll_seconds"):
        dataclasses.replace(spec, schema_poll_seconds=0)


@pytest.mark.parametrize("stack", STACKS)
def test_connection_budget_counts_the_reloader(stack: str) -> None:
    """Each PostgREST pod's poller is one more client of PgBouncer at full scale."""
    s = stack_settings(stack)
    clients = {c.name: c for c in inputs.budget_input(s).clients}
    for name, domain in s.domains.items():
        assert clients[f"domains.{name}"].connections == domain.replicas.max * (domain.db_pool + 1)
    if s.graphql.enabled:
        assert clients["graphql"].connections == s.graphql.replicas.max * s.graphql.db_pool
