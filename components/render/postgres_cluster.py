"""CloudNativePG ``Cluster`` spec for the platform database.

PostgreSQL 15 like the integration tests run. The superuser stays disabled; the platform's admin
role owns the application database and holds CREATEROLE (not SUPERUSER, not BYPASSRLS), which is
exactly what the roles, schemas and grants of the access plan need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# PostgreSQL 15.18 is the minor release the integration tests run against (Debian 12).
POSTGRES_IMAGE: Final = "ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm"
CNPG_API_VERSION: Final = "postgresql.cnpg.io/v1"


@dataclass(frozen=True, kw_only=True)
class ClusterInput:
    instances: int
    storage_size: str
    storage_class: str | None
    max_connections: int
    database: str
    admin_user: str
    admin_secret: str
    resources: dict[str, dict[str, str]]
    image: str = POSTGRES_IMAGE

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances: must be >= 1, got {self.instances}")
        if self.max_connections < 20:
            raise ValueError(f"max_connections: must be >= 20, got {self.max_connections}")


def cluster_spec(inp: ClusterInput) -> dict[str, Any]:
    """The ``spec`` of the Cluster: 1 primary + (instances - 1) streaming read replicas."""
    storage: dict[str, Any] = {"size": inp.storage_size}
    if inp.storage_class:
        storage["storageClass"] = inp.storage_class
    return {
        "instances": inp.instances,
        "imageName": inp.image,
        "primaryUpdateStrategy": "unsupervised",
        "enableSuperuserAccess": False,
        "enablePDB": True,
        "storage": storage,
        "resources": inp.resources,
        "postgresql": {
            "shared_preload_libraries": ["pg_stat_statements"],
            "parameters": {
                "max_connections": str(inp.max_connections),
                "password_encryption": "scram-sha-256",
                "pg_stat_statements.max": "10000",
                "pg_stat_statements.track": "all",
                "log_min_duration_statement": "1000",
                "ssl_min_protocol_version": "TLSv1.2",
            },
            # Only TLS and SCRAM: no md5, no trust, no plain-text host lines.
            "pg_hba": ["hostssl all all all scram-sha-256"],
        },
        "bootstrap": {
            "initdb": {
                "database": inp.database,
                "owner": inp.admin_user,
                "secret": {"name": inp.admin_secret},
                "dataChecksums": True,
            }
        },
        "managed": {
            "roles": [
                {
                    "name": inp.admin_user,
                    "ensure": "present",
                    "login": True,
                    "createrole": True,
                    "superuser": False,
                    "bypassrls": False,
                    "createdb": False,
                    "replication": False,
                    "inherit": True,
                    "passwordSecret": {"name": inp.admin_secret},
                    "comment": "pgplatform admin: manages roles, schemas and grants",
                }
            ]
        },
        "monitoring": {"enablePodMonitor": False},
        "affinity": {"enablePodAntiAffinity": True, "podAntiAffinityType": "required"},
    }
