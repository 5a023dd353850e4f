"""pg_stat_statements and auto_explain on the Cluster: per environment, from stack config."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from components.inputs import cluster_input
from components.render.postgres_cluster import QueryInsights, cluster_spec
from components.settings import SettingsError, parse_settings
from tests.conftest import run_program
from tests.unit.test_settings import _PROD, _STAGING
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
CUSTOM_IMAGE = "registry.example.com/pgplatform/postgresql-advisor:15.18-1"


def _with_insights(base: dict[str, Any], **values: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    raw.setdefault("postgres", {}).setdefault("queryInsights", {}).update(values)
    return raw


@pytest.mark.parametrize(
    ("stack", "min_duration", "analyze"), [("staging", "250ms", "on"), ("prod", "1000ms", "off")]
)
def test_the_cluster_logs_slow_plans_per_environment(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str, min_duration: str, analyze: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    (cluster,) = mocks.by_type(CLUSTER)
    postgresql = cluster.inputs["spec"]["postgresql"]
    # CloudNativePG loads auto_explain itself once an auto_explain.* parameter is set.
    assert postgresql["shared_preload_libraries"] == ["pg_stat_statements"]
    parameters = postgresql["parameters"]
    assert parameters["auto_explain.log_min_duration"] == min_duration
    assert parameters["auto_explain.log_analyze"] == analyze
    assert parameters["auto_explain.log_buffers"] == analyze
    # Per-node clocks are what makes ANALYZE expensive: never on for every statement.
    assert parameters["auto_explain.log_timing"] == "off"
    assert parameters["pg_stat_statements.track"] == "all"
    assert parameters["pg_stat_statements.max"] == "10000"


def test_stack_config_overrides_the_defaults() -> None:
    raw = _with_insights(
        _PROD, autoExplainMinDuration="2s", autoExplainSampleRate=0.25, statementsTrack="top"
    )
    settings = parse_settings("prod", raw)
    parameters = cluster_spec(cluster_input(settings, "admin"))["postgresql"]["parameters"]
    assert parameters["auto_explain.log_min_duration"] == "2000ms"
    assert parameters["auto_explain.sample_rate"] == "0.25"
    assert parameters["pg_stat_statements.track"] == "top"


def test_qualstats_is_preloaded_only_from_an_image_that_has_it() -> None:
    problems = _problems("staging", _with_insights(_STAGING, qualstats=True))
    assert any(
        p.startswith("pgplatform:postgres.queryInsights.qualstats: the 'standard' image")
        and "postgresql-15-pg-qualstats" in p
        for p in problems
    ), problems
    raw = _with_insights(_STAGING, qualstats=True)
    raw["postgres"]["image"] = CUSTOM_IMAGE
    spec = cluster_spec(cluster_input(parse_settings("staging", raw), "admin"))
    assert spec["postgresql"]["shared_preload_libraries"] == ["pg_stat_statements", "pg_qualstats"]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"autoExplainSampleRate": 0}, "postgres.queryInsights.autoExplainSampleRate"),
        ({"statementsTrack": "nested"}, "postgres.queryInsights.statementsTrack"),
        ({"statementsMax": 10}, "postgres.queryInsights.statementsMax"),
        ({"autoExplainMinDuration": "fast"}, "postgres.queryInsights.autoExplainMinDuration"),
    ],
)
def test_bad_values_name_their_key(values: dict[str, Any], key: str) -> None:
    problems = _problems("staging", _with_insights(_STAGING, **values))
    assert any(p.startswith(f"pgplatform:{key}") for p in problems), problems


def test_the_builder_refuses_what_settings_would() -> None:
    with pytest.raises(ValueError, match="statements_track"):
        QueryInsights(statements_track="nested")


def _problems(stack: str, raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw)
    return [str(p) for p in caught.value.problems]
