"""The first `pulumi up`: nothing connects to the database before the Cluster is ready.

pulumi-kubernetes counts a custom resource as created once the API server stored it, unless the
object carries ``pulumi.com/waitFor``. So the Cluster must be awaited, and everything that talks
to the database (pulumi-postgresql, the SQL baseline Job, every workload, every object naming the
Cluster's Services or Secrets) must have it among its transitive dependencies: the engine's own
ordering, i.e. the edges ``depends_on``/input dependencies, parent and provider.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from components.settings import parse_settings
from tests.conftest import run_program
from tests.unit.test_settings import _PROD, _STAGING, _problems, _with
from tools.mocks import Recorded, RecordingMocks

pytestmark = pytest.mark.unit

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
PG_PROVIDER = "pulumi:providers:postgresql"
WORKLOADS = frozenset(
    {
        "kubernetes:apps/v1:Deployment",
        "kubernetes:apps/v1:StatefulSet",
        "kubernetes:apps/v1:DaemonSet",
        "kubernetes:batch/v1:Job",
        "kubernetes:batch/v1:CronJob",
        "kubernetes:postgresql.cnpg.io/v1:ScheduledBackup",
        "kubernetes:postgresql.cnpg.io/v1:Pooler",
    }
)
# Services and Secrets CloudNativePG creates for the Cluster ``postgres-db``.
CLUSTER_OBJECTS = tuple(
    f"postgres-db-{suffix}" for suffix in ("rw", "ro", "r", "ca", "app", "server", "superuser")
)


@pytest.fixture(params=["staging", "prod"])
def mocks(
    request: pytest.FixtureRequest, pulumi_mocks: Callable[..., RecordingMocks]
) -> RecordingMocks:
    return run_program(pulumi_mocks, str(request.param))


def _ancestors(mocks: RecordingMocks) -> Callable[[Recorded], set[str]]:
    """URNs a resource is ordered after, transitively (dependencies, parent, provider)."""
    by_urn = {r.urn: r for r in mocks.resources}
    assert all(by_urn), "the mocks record every registration's URN"

    def edges(r: Recorded) -> set[str]:
        out = set(r.dependencies)
        if r.parent_urn:
            out.add(r.parent_urn)
        if r.provider:
            out.add(r.provider.rsplit("::", 1)[0])
        return out

    def walk(r: Recorded) -> set[str]:
        seen: set[str] = set()
        todo = list(edges(r))
        while todo:
            urn = todo.pop()
            if urn in seen:
                continue
            seen.add(urn)
            if urn in by_urn:
                todo += edges(by_urn[urn])
        return seen

    return walk


def _names_cluster_objects(r: Recorded) -> bool:
    text = json.dumps(r.inputs)
    return any(f'"{name}' in text or f"{name}." in text for name in CLUSTER_OBJECTS)


def _talks_to_database(r: Recorded) -> bool:
    return (
        r.type == PG_PROVIDER
        or r.type.startswith("postgresql:")
        or r.type in WORKLOADS
        or _names_cluster_objects(r)
    )


def test_cluster_is_awaited_until_ready(mocks: RecordingMocks) -> None:
    (cluster,) = mocks.by_type(CLUSTER)
    annotations = cluster.inputs["metadata"]["annotations"]
    # CloudNativePG sets condition Ready=True when the phase is "Cluster in healthy state".
    assert annotations["pulumi.com/waitFor"] == "condition=Ready"
    # Longer than the provider's default of ten minutes: a replica's base backup takes time.
    assert int(annotations["pulumi.com/timeoutSeconds"]) >= 1200


def test_everything_that_talks_to_the_database_waits_for_the_cluster(
    mocks: RecordingMocks,
) -> None:
    (cluster,) = mocks.by_type(CLUSTER)
    ancestors = _ancestors(mocks)
    clients = [r for r in mocks.resources if r is not cluster and _talks_to_database(r)]
    types = {r.type for r in clients}
    # The check covers what it claims to: the provider, grants, the Job, the pooler, the APIs.
    assert {PG_PROVIDER, "postgresql:index/grant:Grant", "kubernetes:batch/v1:Job"} <= types
    assert "kubernetes:apps/v1:Deployment" in types
    early = sorted(f"{r.type}::{r.name}" for r in clients if cluster.urn not in ancestors(r))
    assert early == []


def test_the_dependency_walk_can_tell_before_from_after(mocks: RecordingMocks) -> None:
    """What the Cluster itself needs (its admin credentials) is not ordered after it."""
    (cluster,) = mocks.by_type(CLUSTER)
    ancestors = _ancestors(mocks)
    secrets = mocks.by_type("kubernetes:external-secrets.io/v1:ExternalSecret")
    admin = [r for r in secrets if r.urn in ancestors(cluster)]
    assert admin
    assert all(cluster.urn not in ancestors(r) for r in admin)


# --- the provider's CA ---------------------------------------------------------------------------


def test_prod_provider_verifies_with_the_ca_file(
    pulumi_mocks: Callable[..., RecordingMocks],
) -> None:
    mocks = run_program(pulumi_mocks, "prod")
    (provider,) = mocks.by_type(PG_PROVIDER)
    assert provider.inputs["sslmode"] == "verify-full"
    assert provider.inputs["sslrootcert"] == "ca/postgres-ca.crt"


def test_staging_provider_has_no_ca_file(pulumi_mocks: Callable[..., RecordingMocks]) -> None:
    mocks = run_program(pulumi_mocks, "staging")
    (provider,) = mocks.by_type(PG_PROVIDER)
    assert provider.inputs["sslmode"] == "require"
    assert "sslrootcert" not in provider.inputs


def test_verify_full_without_a_ca_file_is_a_settings_error() -> None:
    problems = _problems("staging", _with(_STAGING, "postgres.sslmode", "verify-full"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("pgplatform:postgres.providerCaFile:")
    assert "'postgres-db-ca'" in problems[0]  # where the runner gets it in mode cnpg
    raw = _with(_STAGING, "postgres.sslmode", "verify-full")
    raw = _with(raw, "postgres.providerCaFile", "ca/staging.crt")
    assert parse_settings("staging", raw).postgres.provider_ca_file == "ca/staging.crt"


def test_ca_file_without_verification_is_a_settings_error() -> None:
    problems = _problems("staging", _with(_STAGING, "postgres.providerCaFile", "ca/x.crt"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("pgplatform:postgres.providerCaFile:")


def test_prod_default_names_the_ca_file() -> None:
    assert parse_settings("prod", _PROD).postgres.provider_ca_file == "ca/postgres-ca.crt"
