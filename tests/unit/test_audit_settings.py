"""pgaudit per stack: the setting, its checks, and the parameters the Cluster gets."""

from __future__ import annotations

import pytest

from components.inputs import cluster_input
from components.render.audit import pgaudit_parameters
from components.render.postgres_cluster import cluster_spec
from tests.unit.test_settings import _PROD, _STAGING, _problems, _with

pytestmark = pytest.mark.unit


def test_parameters_keep_bind_values_and_catalog_reads_out() -> None:
    assert pgaudit_parameters(["ddl", "role"]) == {
        "pgaudit.log": "role, ddl",
        "pgaudit.log_catalog": "off",
        "pgaudit.log_parameter": "off",
        "pgaudit.log_relation": "off",
    }


@pytest.mark.parametrize("classes", [[], ["ddl", "select"]])
def test_parameters_refuse_unknown_classes(classes: list[str]) -> None:
    with pytest.raises(ValueError, match="allowed: a non-empty list of"):
        pgaudit_parameters(classes)


def test_cluster_carries_the_stack_classes() -> None:
    from components.settings import parse_settings

    settings = parse_settings("staging", _with(_STAGING, "audit.pgauditLog", ["ddl", "write"]))
    parameters = cluster_spec(cluster_input(settings, "admin"))["postgresql"]["parameters"]
    assert parameters["pgaudit.log"] == "write, ddl"
    # The operator adds pgaudit itself: listing it would be refused as a fixed parameter.
    preload = cluster_spec(cluster_input(settings, "admin"))["postgresql"][
        "shared_preload_libraries"
    ]
    assert "pgaudit" not in preload


def test_prod_must_log_ddl_and_role() -> None:
    [problem] = _problems("prod", _with(_PROD, "audit.pgauditLog", ["ddl"]))
    assert "pgplatform:audit.pgauditLog" in problem
    assert "missing ['role']" in problem


def test_unknown_class_names_its_key() -> None:
    [problem] = _problems("staging", _with(_STAGING, "audit.pgauditLog", ["ddl", "select"]))
    assert "pgplatform:audit.pgauditLog[1]" in problem
    assert "'misc_set'" in problem
