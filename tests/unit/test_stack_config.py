"""The offline render reads a stack file the way the Pulumi engine hands config to the program."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.render import OFFLINE_SECRET, read_stack_config

pytestmark = pytest.mark.unit


def test_object_values_arrive_with_sorted_keys_as_under_the_engine(tmp_path: Path) -> None:
    """`pulumi up` passes pgplatform:domains with its keys in name order, whatever the file's.

    Under the real engine the dashboards and alert rules list the domains alphabetically; the
    offline render must produce the same order, or its manifests differ from a real deploy.
    """
    stack = tmp_path / "Pulumi.x.yaml"
    stack.write_text(
        "config:\n"
        "  pgplatform:domains:\n"
        "    identity: {maxRows: 5}\n"
        "    content: {maxRows: 6}\n"
        "    analytics: {readFromReplicas: true, maxRows: 7}\n"
        "  pgplatform:postgresAdminPassword:\n"
        "    secure: v1:abc\n"
    )
    config, secret_keys = read_stack_config(stack)
    domains = json.loads(config["pgplatform:domains"])
    assert list(domains) == ["analytics", "content", "identity"]
    assert list(domains["analytics"]) == ["maxRows", "readFromReplicas"]
    assert config["pgplatform:postgresAdminPassword"] == OFFLINE_SECRET
    assert secret_keys == ["pgplatform:postgresAdminPassword"]
