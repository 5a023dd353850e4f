"""README and Pulumi.yaml document every stack config key, generated from the settings models."""

from __future__ import annotations

import pytest
import yaml

from components.settings import NAMESPACE, StackSettings
from tests.conftest import ROOT
from tools.config_reference import BEGIN, END, markdown

pytestmark = pytest.mark.unit


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown(), "run: python -m tools.config_reference --write"


def test_every_top_level_key_is_declared_in_pulumi_yaml() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    declared = {key.removeprefix(f"{NAMESPACE}:") for key in project["config"]}
    keys = {info.alias or name for name, info in StackSettings.model_fields.items()}
    assert declared == keys - {"stack"}
    for key, declaration in project["config"].items():
        assert declaration.get("description"), key


def test_reference_covers_nested_keys() -> None:
    table = markdown()
    for key in ("domains.<name>.maxRows", "services[].access", "postgres.sslmode"):
        assert f"`{NAMESPACE}:{key}`" in table
