"""The platform's psql containers run the server's own image (``postgres.image``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from components.render.postgres_cluster import POSTGRES_IMAGE
from components.settings import decode_config_value
from tests.conftest import run_program, stack_config
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

# The default image, pulled through a registry mirror (an air-gapped cluster's case).
MIRRORED = "registry.internal.example/" + POSTGRES_IMAGE.split("/", 1)[1]


def containers(body: Any) -> Iterator[dict[str, Any]]:
    """Every container and init container anywhere in a manifest body."""
    if isinstance(body, dict):
        for key in ("containers", "initContainers"):
            yield from body.get(key, []) or []
        for value in body.values():
            yield from containers(value)
    elif isinstance(body, list):
        for value in body:
            yield from containers(value)


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_a_mirrored_postgres_image_is_the_only_postgres_image_pulled(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    config, secrets = stack_config(stack)
    postgres = decode_config_value(config.get("pgplatform:postgres", "{}"))
    config = {**config, "pgplatform:postgres": json.dumps({**postgres, "image": MIRRORED})}
    mocks = run_program(pulumi_mocks, stack, config, secrets)
    images: dict[str, set[str]] = {}
    for resource in mocks.kubernetes():
        for container in containers(resource.inputs):
            images.setdefault(container["image"], set()).add(resource.name)
        if resource.type.endswith(":Cluster"):
            assert resource.inputs["spec"]["imageName"] == MIRRORED
    assert POSTGRES_IMAGE not in images, images.get(POSTGRES_IMAGE)
    # The SQL Jobs and the APIs' schema pollers are among the users of the mirror.
    users = images[MIRRORED]
    assert any(name.startswith("sql-baseline-job-") for name in users)
    assert any(name.startswith("sql-baseline-migrations-job-") for name in users)
    assert any(name.startswith("content-api") for name in users), sorted(users)
