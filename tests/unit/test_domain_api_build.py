"""The offline render of both stacks: each domain's ``postgrest.conf`` is the builder's output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from components import inputs
from components.render import domain_api as render
from components.render.postgrest import render_postgrest_conf
from components.settings import decode_config_value, parse_settings
from tests.conftest import STACKS, api_database, stack_config

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_conf_files_match_the_builder(
    rendered_stack: Callable[[str], Path], stack: str
) -> None:
    build = rendered_stack(stack)
    config, secrets = stack_config(stack)
    raw = {k.split(":", 1)[1]: decode_config_value(v) for k, v in config.items()}
    settings = parse_settings(stack, raw, [s.split(":", 1)[1] for s in secrets])

    config_maps: dict[str, str] = {}
    for path in sorted((build / "manifests").glob("configmap_*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        labels = manifest["metadata"]["labels"]
        if labels.get("app.kubernetes.io/name") == render.APP_NAME:
            config_maps[labels["app.kubernetes.io/instance"]] = manifest["metadata"]["name"]
    assert set(config_maps) == set(settings.domains)

    for domain, name in config_maps.items():
        on_disk = (build / "files" / name / render.CONF_KEY).read_text()
        expected = render_postgrest_conf(
            inputs.postgrest_conf_input(settings, domain, api_database(settings, domain))
        )
        assert on_disk == expected, domain
        # The Deployment of the domain mounts exactly this ConfigMap.
        (deployment,) = [
            yaml.safe_load(p.read_text())
            for p in (build / "manifests").glob("deployment_*.yaml")
            if yaml.safe_load(p.read_text())["metadata"]["labels"] == render.pod_labels(domain)
        ]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"configMap": {"name": name, "defaultMode": 0o440}, "name": "config"} in volumes
