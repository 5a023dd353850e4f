"""Throw-away PostgreSQL clusters shared by the integration tests of one run.

Starting a cluster costs about a second, so one plain and one TLS-only cluster serve the whole
session; tests isolate themselves with a database of their own (``fresh_database``). Roles are
cluster-wide: a test whose roles must differ from other tests' (staging vs prod access plans)
starts its own cluster with ``running_cluster()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.pg import PgCluster, running_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A plain cluster: scram-sha-256 over TCP and the unix socket, no TLS."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_tls_cluster() -> Iterator[PgCluster]:
    """A cluster that refuses every TCP login without TLS, as the prod database does."""
    with running_cluster(tls_only=True) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def fresh_database(pg_cluster: PgCluster) -> Callable[[str], str]:
    """``fresh_database(name)``: a new, empty database ``name`` on ``pg_cluster`` (re-created).

    The name is the caller's because rendered SQL names its database (``010_access.sql``
    grants CONNECT on the stack's database): one name per stack, e.g. the stack's database.
    """
    return pg_cluster.create_database
