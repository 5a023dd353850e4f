"""Grants that rewrite the same ACL are applied one after the other.

The pulumi-postgresql provider applies a grant as REVOKE + GRANT in its own transaction; two of
them on the same catalog row at once fail with "tuple concurrently updated" (seen on a real
``pulumi up``). So every pair of grants on one database, one schema, the objects of one type in
one schema, or one default-privileges row must be ordered by the engine's dependency graph.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable

import pytest

from tests.conftest import run_program
from tests.unit.test_first_up import _ancestors
from tools.mocks import Recorded, RecordingMocks

pytestmark = pytest.mark.unit

GRANT = "postgresql:index/grant:Grant"
DEFAULT_PRIVILEGES = "postgresql:index/defaultPrivileges:DefaultPrivileges"


def _acl(r: Recorded) -> tuple[str, ...] | None:
    """The catalog row a grant rewrites, or None for what holds no shared ACL."""
    i = r.inputs
    if r.type == DEFAULT_PRIVILEGES:
        return ("default", i["owner"], i.get("schema") or "", i["objectType"])
    if r.type != GRANT:
        return None
    if i["objectType"] == "database":
        return ("database", i["database"])
    if i["objectType"] == "schema":
        return ("schema", i["schema"])
    return ("objects", i["schema"], i["objectType"], ",".join(i.get("objects") or []))


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_grants_on_one_acl_are_applied_in_sequence(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str
) -> None:
    mocks = run_program(pulumi_mocks, stack)
    ancestors = _ancestors(mocks)
    groups: dict[tuple[str, ...], list[Recorded]] = defaultdict(list)
    for r in mocks.resources:
        acl = _acl(r)
        if acl is not None:
            groups[acl].append(r)
    shared = [acl for acl, members in groups.items() if len(members) > 1]
    # The plan does put several roles on one ACL: the test is not vacuous.
    assert any(acl[0] == "schema" for acl in shared)
    assert any(acl[0] == "default" for acl in shared)
    for acl in shared:
        for a, b in itertools.combinations(groups[acl], 2):
            assert a.urn in ancestors(b) or b.urn in ancestors(a), (acl, a.name, b.name)
