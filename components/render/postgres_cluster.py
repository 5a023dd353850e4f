"""CloudNativePG ``Cluster`` spec for the platform database.

PostgreSQL 15 like the integration tests run. The superuser stays disabled; the platform's admin
role owns the application database and holds CREATEROLE (not SUPERUSER, not BYPASSRLS), which is
exactly what the roles, schemas and grants of the access plan need.

Backups use CloudNativePG's in-core Barman Cloud support (``spec.backup.barmanObjectStore``):
continuous WAL archiving plus base backups to an object store, which together give
point-in-time recovery. In 1.30 it is deprecated in favour of the Barman Cloud plugin (removal
announced for 1.31), but the plugin's ``ObjectStore`` CRD is not among the schemas this project
validates against, so the in-core form is the one we can prove; docs/backups.md describes the
migration. Backups written either way are the same Barman layout and restore with both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

# PostgreSQL 15.18 is the minor release the integration tests run against (Debian 12).
POSTGRES_IMAGE: Final = "ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm"
CNPG_API_VERSION: Final = "postgresql.cnpg.io/v1"
CUSTOM_QUERIES_KEY: Final = "queries.yaml"
"""Key of the extra monitoring queries in the ConfigMap ``customQueriesConfigMap`` names."""
RECOVERY_SOURCE: Final = "origin"
"""``externalClusters`` entry a recovery Cluster restores from."""

# Keys the credentials Secret (``backup.credentialsSecret``) must hold, per object store scheme.
S3_ACCESS_KEY_ID: Final = "ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY: Final = "ACCESS_SECRET_KEY"  # noqa: S105 - a key name
GCS_CREDENTIALS: Final = "gcsCredentials"
AZURE_CONNECTION_STRING: Final = "AZURE_CONNECTION_STRING"

_DESTINATION = re.compile(r"^(s3|gs|https)://[^/\s]+(/[^\s]*)?$")
_RETENTION = re.compile(r"^[1-9][0-9]*[dwm]$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True, kw_only=True)
class ObjectStoreInput:
    """Where base backups and the WAL archive go (``backup.*`` settings)."""

    destination_path: str
    credentials_secret: str
    retention: str
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if not _DESTINATION.match(self.destination_path):
            raise ValueError(
                f"destination_path: must be s3://, gs:// or https:// (Azure), "
                f"got {self.destination_path!r}"
            )
        if not _K8S_NAME.match(self.credentials_secret) or len(self.credentials_secret) > 253:
            raise ValueError(
                f"credentials_secret: not a Secret name, got {self.credentials_secret!r}"
            )
        if not _RETENTION.match(self.retention):
            raise ValueError(f"retention: use e.g. '30d', '4w', '6m', got {self.retention!r}")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("https://", "http://")
        ):
            raise ValueError(f"endpoint_url: must be an http(s) URL, got {self.endpoint_url!r}")

    @property
    def scheme(self) -> str:
        return self.destination_path.split("://", 1)[0]


def _credentials(store: ObjectStoreInput) -> dict[str, Any]:
    """Secret key references for the store's provider; the values never enter a manifest."""
    secret = store.credentials_secret
    if store.scheme == "s3":
        return {
            "s3Credentials": {
                "accessKeyId": {"name": secret, "key": S3_ACCESS_KEY_ID},
                "secretAccessKey": {"name": secret, "key": S3_SECRET_ACCESS_KEY},
            }
        }
    if store.scheme == "gs":
        return {
            "googleCredentials": {
                "applicationCredentials": {"name": secret, "key": GCS_CREDENTIALS}
            }
        }
    return {
        "azureCredentials": {"connectionString": {"name": secret, "key": AZURE_CONNECTION_STRING}}
    }


def barman_object_store(
    store: ObjectStoreInput, *, server_name: str | None = None
) -> dict[str, Any]:
    """``barmanObjectStore`` for archiving (no ``server_name``) or for restoring a cluster's data.

    gzip for WAL and base backups: supported by every barman-cloud release the operand images
    ship, and WAL compresses well. Parallel WAL upload keeps archiving ahead of bursts of writes.
    """
    out: dict[str, Any] = {"destinationPath": store.destination_path}
    if store.endpoint_url:
        out["endpointURL"] = store.endpoint_url
    out.update(_credentials(store))
    out["wal"] = {"compression": "gzip", "maxParallel": 4}
    out["data"] = {"compression": "gzip", "jobs": 2}
    if server_name is not None:
        out["serverName"] = server_name
    return out


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
    backup: ObjectStoreInput | None = None
    custom_queries_config_map: str | None = None
    """ConfigMap (key ``queries.yaml``) with the platform's extra monitoring queries."""
    post_init_application_sql: tuple[str, str] | None = None
    """(ConfigMap, key) of SQL run once as superuser in the new application database
    (``postInitApplicationSQLRefs``): the superuser part of the platform baseline."""

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances: must be >= 1, got {self.instances}")
        if self.max_connections < 20:
            raise ValueError(f"max_connections: must be >= 20, got {self.max_connections}")


def _storage(inp: ClusterInput) -> dict[str, Any]:
    storage: dict[str, Any] = {"size": inp.storage_size}
    if inp.storage_class:
        storage["storageClass"] = inp.storage_class
    return storage


def _postgresql(inp: ClusterInput) -> dict[str, Any]:
    return {
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
    }


def _monitoring(inp: ClusterInput) -> dict[str, Any]:
    # The PodMonitor is ours (ObservabilityStack): the operator's own one is deprecated.
    out: dict[str, Any] = {"enablePodMonitor": False}
    if inp.custom_queries_config_map:
        out["customQueriesConfigMap"] = [
            {"name": inp.custom_queries_config_map, "key": CUSTOM_QUERIES_KEY}
        ]
    return out


def _post_init_refs(inp: ClusterInput) -> dict[str, Any]:
    if inp.post_init_application_sql is None:
        return {}
    name, key = inp.post_init_application_sql
    return {"postInitApplicationSQLRefs": {"configMapRefs": [{"name": name, "key": key}]}}


def cluster_spec(inp: ClusterInput) -> dict[str, Any]:
    """The ``spec`` of the Cluster: 1 primary + (instances - 1) streaming read replicas.

    With ``backup`` set: WAL archiving and base backups to the object store, pruned by the
    retention policy (base backups and the WAL needed by the oldest kept one).
    """
    spec: dict[str, Any] = {
        "instances": inp.instances,
        "imageName": inp.image,
        "primaryUpdateStrategy": "unsupervised",
        "enableSuperuserAccess": False,
        "enablePDB": True,
        "storage": _storage(inp),
        "resources": inp.resources,
        "postgresql": _postgresql(inp),
        "bootstrap": {
            "initdb": {
                "database": inp.database,
                "owner": inp.admin_user,
                "secret": {"name": inp.admin_secret},
                "dataChecksums": True,
                **_post_init_refs(inp),
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
        "monitoring": _monitoring(inp),
        "affinity": {"enablePodAntiAffinity": True, "podAntiAffinityType": "required"},
    }
    if inp.backup is not None:
        spec["backup"] = {
            "barmanObjectStore": barman_object_store(inp.backup),
            "retentionPolicy": inp.backup.retention,
            # Base backups from a standby keep the primary's I/O for the API.
            "target": "prefer-standby",
        }
    return spec


def recovery_cluster_spec(inp: ClusterInput, *, source_cluster: str) -> dict[str, Any]:
    """A one-instance Cluster restored from ``source_cluster``'s latest backup and WAL.

    Used by the restore check: same image, parameters and storage as the source (recovery
    replays WAL with the source's settings), no backup section (it must never archive into the
    source's folder) and no managed roles (the roles come from the backup).
    """
    if inp.backup is None:
        raise ValueError("backup: a recovery Cluster needs the object store of the source")
    return {
        "instances": 1,
        "imageName": inp.image,
        "enableSuperuserAccess": False,
        "storage": _storage(inp),
        "resources": inp.resources,
        "postgresql": _postgresql(inp),
        "bootstrap": {
            "recovery": {
                "source": RECOVERY_SOURCE,
                "database": inp.database,
                "owner": inp.admin_user,
            }
        },
        "externalClusters": [
            {
                "name": RECOVERY_SOURCE,
                "barmanObjectStore": barman_object_store(inp.backup, server_name=source_cluster),
            }
        ],
        "monitoring": {"enablePodMonitor": False},
    }
