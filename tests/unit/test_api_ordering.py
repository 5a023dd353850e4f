"""What a domain API waits for on the first ``pulumi up``: the database objects it uses.

PostgREST logs in as ``postgrest``, switches to the API roles and reads its own schema and the
platform's functions: the roles, their memberships, the grants on its schema and on the
platform's schemas must exist before its pods start. Another domain's grants are not its
concern; waiting on them (and having the engine track those edges) grew with the square of the
number of domains.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import run_program
from tools.mocks import Recorded, RecordingMocks

pytestmark = pytest.mark.unit


def _component(mocks: RecordingMocks, name: str) -> Recorded:
    [found] = [
        r for r in mocks.resources if r.type == "pgplatform:index:DomainApi" and r.name == name
    ]
    return found


def _urns(mocks: RecordingMocks, prefix: str) -> set[str]:
    return {r.urn for r in mocks.resources if r.name.startswith(prefix)}


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_api_waits_for_its_schema_and_the_shared_objects_only(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    waits = set(_component(mocks, "identity-api").dependencies)
    assert _urns(mocks, "access-role-") <= waits  # every role, the authenticator among them
    assert _urns(mocks, "access-member-") <= waits  # postgrest may SET ROLE to the API roles
    assert _urns(mocks, "access-schema-identity") <= waits
    assert _urns(mocks, "access-usage-identity-") <= waits
    assert _urns(mocks, "access-usage-platform-") <= waits  # platform.pre_request and friends
    assert _urns(mocks, "access-default-identity-") <= waits
    assert _urns(mocks, "access-existing-identity-") <= waits  # tables created before it
    assert not waits & _urns(mocks, "access-usage-content-")
    assert not waits & _urns(mocks, "access-schema-content")
