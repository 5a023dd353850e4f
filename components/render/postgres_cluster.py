"""CloudNativePG ``Cluster`` spec for the platform database.

PostgreSQL 15 like the integration tests run. The superuser stays disabled; the platform's admin
role owns the application database and holds CREATEROLE (not SUPERUSER, not BYPASSRLS), which is
exactly what the roles, schemas and grants of the access plan need.

Backups go through the Barman Cloud plugin (CNPG-I): an ``ObjectStore`` (``barmancloud.cnpg.io``)
holds the bucket, credentials, compression and retention, and the Cluster names it in
``spec.plugins`` as its WAL archiver. Continuous WAL archiving plus base backups give
point-in-time recovery. The plugin runs Barman Cloud in its own sidecar, so it works with the
``standard`` image flavour, which ships without Barman Cloud. The in-core
``spec.backup.barmanObjectStore`` (deprecated since CloudNativePG 1.26, removal announced for
1.31) remains as method ``barmanObjectStore`` for clusters that still migrate, and only with
the ``system`` flavour, the one image that carries Barman Cloud. Both write the same Barman
layout, so backups taken either way restore with the plugin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from components.render import pods

# PostgreSQL 15.18 is the minor release the integration tests run against (Debian 12).
POSTGRES_IMAGE: Final = "ghcr.io/cloudnative-pg/postgresql:15.18-standard-bookworm"
CNPG_API_VERSION: Final = "postgresql.cnpg.io/v1"
OBJECT_STORE_API_VERSION: Final = "barmancloud.cnpg.io/v1"
BARMAN_CLOUD_PLUGIN: Final = "barman-cloud.cloudnative-pg.io"
"""Name the Barman Cloud plugin registers with the operator (``spec.plugins[].name``)."""
BACKUP_METHODS: Final = ("plugin", "barmanObjectStore")
"""``plugin``: the Barman Cloud plugin; ``barmanObjectStore``: the deprecated in-core form."""
IMAGE_FLAVOURS: Final = ("minimal", "standard", "system")
"""CloudNativePG operand image flavours (tag ``<pg>-<flavour>-<os>``); only ``system`` ships
Barman Cloud, which the in-core method runs inside the PostgreSQL container."""
READY_TIMEOUT_SECONDS: Final = 1800
"""How long ``pulumi up`` waits for a created or changed Cluster to become healthy (bootstrap of
the primary, then each replica's base backup)."""
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
_FLAVOUR = re.compile(r"-(" + "|".join(IMAGE_FLAVOURS) + r")(-|$)")


def image_flavour(image: str) -> str | None:
    """The flavour in a CloudNativePG operand image tag; None for an image that names none."""
    tag = image.rsplit("/", 1)[-1].partition("@")[0].partition(":")[2]
    match = _FLAVOUR.search(tag)
    return match.group(1) if match else None


def backup_method_problem(method: str, image: str) -> str | None:
    """Why ``method`` cannot back up a cluster running ``image``; None when they fit.

    The plugin brings Barman Cloud in its own sidecar and fits every flavour. The in-core method
    runs Barman Cloud inside the PostgreSQL container, which only the ``system`` flavour has: with
    ``minimal`` or ``standard`` every WAL archive and base backup fails. An image whose tag names
    no flavour (a custom build) is the operator's to vouch for.
    """
    if method not in BACKUP_METHODS:
        return f"unknown backup method {method!r}; allowed: {list(BACKUP_METHODS)}"
    flavour = image_flavour(image)
    if method == "barmanObjectStore" and flavour in ("minimal", "standard"):
        return (
            f"'barmanObjectStore' runs Barman Cloud inside the PostgreSQL image, and the "
            f"{flavour!r} flavour of {image!r} has none: use 'plugin' (the Barman Cloud plugin), "
            "or a '*-system-*' image while migrating"
        )
    return None


ADVISOR_EXTENSIONS: Final = ("hypopg", "pg_qualstats", "plpgsql_check")
"""Extensions the advisor uses (docs/advisor.md) that CloudNativePG's images do not ship."""


def qualstats_problem(image: str) -> str | None:
    """Why ``image`` cannot preload pg_qualstats; None when it may.

    A server told to preload a library it does not have refuses to start. CloudNativePG's own
    images (any flavour) lack pg_qualstats; an image whose tag names no flavour (a custom build,
    docs/advisor.md) is the operator's to vouch for.
    """
    flavour = image_flavour(image)
    if flavour is None:
        return None
    return (
        f"the {flavour!r} image {image!r} has no pg_qualstats and would not start with it "
        "preloaded: build an image with postgresql-15-pg-qualstats (docs/advisor.md) and set "
        "postgres.image to it, or turn qualstats off"
    )


@dataclass(frozen=True, kw_only=True)
class QueryInsights:
    """Statement statistics and slow-plan logging (``pg_stat_statements``, ``auto_explain``).

    auto_explain logs the plan of every statement slower than ``auto_explain_min_duration_ms``;
    with ``auto_explain_analyze`` the plan carries actual row counts and buffers (timing stays
    off: row counts cost little, per-node clocks do).
    """

    statements_max: int = 10_000
    statements_track: str = "all"
    auto_explain_min_duration_ms: int = 1000
    auto_explain_analyze: bool = False
    auto_explain_sample_rate: float = 1.0
    qualstats: bool = False

    def __post_init__(self) -> None:
        if not 100 <= self.statements_max <= 1_000_000:
            raise ValueError(f"statements_max: 100..1000000, got {self.statements_max}")
        if self.statements_track not in ("top", "all"):
            raise ValueError(f"statements_track: 'top' or 'all', got {self.statements_track!r}")
        if self.auto_explain_min_duration_ms < 0:
            raise ValueError("auto_explain_min_duration_ms: must be >= 0")
        if not 0 < self.auto_explain_sample_rate <= 1:
            raise ValueError(
                f"auto_explain_sample_rate: in (0, 1], got {self.auto_explain_sample_rate}"
            )

    def preload(self) -> list[str]:
        """Libraries to list: the operator adds auto_explain itself (its parameters are set),
        pg_qualstats it does not manage."""
        return ["pg_stat_statements", *(["pg_qualstats"] * self.qualstats)]

    def parameters(self) -> dict[str, str]:
        def on(flag: bool) -> str:
            return "on" if flag else "off"

        return {
            "pg_stat_statements.max": str(self.statements_max),
            "pg_stat_statements.track": self.statements_track,
            "auto_explain.log_min_duration": f"{self.auto_explain_min_duration_ms}ms",
            "auto_explain.log_analyze": on(self.auto_explain_analyze),
            "auto_explain.log_buffers": on(self.auto_explain_analyze),
            "auto_explain.log_timing": "off",
            "auto_explain.log_nested_statements": "on",
            "auto_explain.sample_rate": f"{self.auto_explain_sample_rate:g}",
        }


def object_store_name(cluster: str) -> str:
    """The ``ObjectStore`` of ``cluster`` (a fixed name: the Cluster and restores refer to it)."""
    return f"{cluster}-backup-store"


@dataclass(frozen=True, kw_only=True)
class ObjectStoreInput:
    """Where base backups and the WAL archive go (``backup.*`` settings)."""

    destination_path: str
    credentials_secret: str
    retention: str
    endpoint_url: str | None = None
    method: str = "plugin"
    """One of ``BACKUP_METHODS``."""
    name: str = "backup-store"
    """``metadata.name`` of the plugin's ``ObjectStore`` (``object_store_name``)."""

    def __post_init__(self) -> None:
        if self.method not in BACKUP_METHODS:
            raise ValueError(f"method: one of {list(BACKUP_METHODS)}, got {self.method!r}")
        if not _K8S_NAME.match(self.name) or len(self.name) > 253:
            raise ValueError(f"name: not an object name, got {self.name!r}")
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
    """Barman Cloud's configuration: the plugin's ``ObjectStore.spec.configuration``, or the
    in-core ``barmanObjectStore`` for archiving (no ``server_name``) or restoring a cluster.

    gzip for WAL and base backups: supported by every barman-cloud release, and WAL compresses
    well. Parallel WAL upload keeps archiving ahead of bursts of writes. The plugin takes the
    server name from the Cluster's plugin parameters instead (its ``ObjectStore`` must leave
    ``serverName`` empty).
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


SIDECAR_RESOURCES: Final = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
"""The plugin's Barman Cloud sidecar in every instance pod: idle between WAL segments, busy
(compression, upload) during a base backup; Python barman-cloud stays well under 512Mi."""


def object_store_spec(store: ObjectStoreInput) -> dict[str, Any]:
    """``ObjectStore.spec``: where and how the plugin archives, and how long it keeps backups.

    The retention policy lives here with the plugin (the in-core form kept it on the Cluster):
    the plugin prunes base backups older than it and the WAL only they needed.
    """
    return {
        "configuration": barman_object_store(store),
        "retentionPolicy": store.retention,
        "instanceSidecarConfiguration": {"resources": SIDECAR_RESOURCES},
    }


def plugin_entry(store: ObjectStoreInput, *, archiver: bool) -> dict[str, Any]:
    """``spec.plugins[]`` of a Cluster archiving its WAL through ``store``."""
    return {
        "name": BARMAN_CLOUD_PLUGIN,
        "isWALArchiver": archiver,
        "parameters": {"barmanObjectName": store.name},
    }


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
    custom_queries_config_map: pods.Placed | None = None
    """ConfigMap (key ``queries.yaml``) with the platform's extra monitoring queries."""
    query_insights: QueryInsights = QueryInsights()
    post_init_application_sql: tuple[str, str] | None = None
    """(ConfigMap, key) of SQL run once as superuser in the new application database
    (``postInitApplicationSQLRefs``): the superuser part of the platform baseline."""
    audit_parameters: tuple[tuple[str, str], ...] = ()
    """``pgaudit.*`` parameters (components/render/audit.py); the operator loads pgaudit."""
    extra_parameters: tuple[tuple[str, str], ...] = ()
    """More ``postgresql.parameters`` (change data capture: ``wal_level``,
    ``max_slot_wal_keep_size``)."""
    extra_roles: tuple[dict[str, Any], ...] = ()
    """More ``managed.roles`` (the publication role: only a superuser grants REPLICATION)."""
    external_clusters: tuple[dict[str, Any], ...] = ()
    """``externalClusters`` entries (the one a ``Subscription`` connects through)."""

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances: must be >= 1, got {self.instances}")
        if self.max_connections < 20:
            raise ValueError(f"max_connections: must be >= 20, got {self.max_connections}")
        if ":" not in self.image.rsplit("/", 1)[-1] or self.image.endswith(":latest"):
            raise ValueError(f"image: pin a version, got {self.image!r}")
        if self.query_insights.qualstats and (problem := qualstats_problem(self.image)):
            raise ValueError(f"query_insights.qualstats: {problem}")
        if self.backup is not None:
            problem = backup_method_problem(self.backup.method, self.image)
            if problem:
                raise ValueError(f"backup.method: {problem}")


def await_ready_annotations(timeout_seconds: int = READY_TIMEOUT_SECONDS) -> dict[str, str]:
    """Annotations that make pulumi-kubernetes (4.18+) wait for the Cluster to be usable.

    Without them a custom resource counts as created once the API server stored it, and the
    roles, grants, the SQL baseline Job and every workload reading ``<cluster>-ca`` would start
    against a database that does not exist yet. The operator sets the condition ``Ready`` to
    ``True`` exactly when the phase is "Cluster in healthy state"; ``timeoutSeconds`` replaces the
    provider's default of ten minutes.
    """
    return {
        "pulumi.com/waitFor": "condition=Ready",
        "pulumi.com/timeoutSeconds": str(timeout_seconds),
    }


def _storage(inp: ClusterInput) -> dict[str, Any]:
    storage: dict[str, Any] = {"size": inp.storage_size}
    if inp.storage_class:
        storage["storageClass"] = inp.storage_class
    return storage


def _postgresql(inp: ClusterInput) -> dict[str, Any]:
    return {
        "shared_preload_libraries": inp.query_insights.preload(),
        "parameters": {
            "max_connections": str(inp.max_connections),
            "password_encryption": "scram-sha-256",
            **inp.query_insights.parameters(),
            "log_min_duration_statement": "1000",
            "ssl_min_protocol_version": "TLSv1.2",
            **dict(inp.audit_parameters),
            **dict(inp.extra_parameters),
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

    With ``backup`` set: WAL archiving to the object store through the Barman Cloud plugin
    (method ``plugin``: the ``ObjectStore`` named ``backup.name`` holds the rest), or in-core
    (method ``barmanObjectStore``: store and retention inline).
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
                },
                *inp.extra_roles,
            ]
        },
        "monitoring": _monitoring(inp),
        "affinity": {"enablePodAntiAffinity": True, "podAntiAffinityType": "required"},
    }
    if inp.external_clusters:
        spec["externalClusters"] = list(inp.external_clusters)
    if inp.backup is not None and inp.backup.method == "plugin":
        spec["plugins"] = [plugin_entry(inp.backup, archiver=True)]
    elif inp.backup is not None:
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
        "externalClusters": [recovery_source(inp.backup, source_cluster=source_cluster)],
        "monitoring": {"enablePodMonitor": False},
    }


def recovery_source(store: ObjectStoreInput, *, source_cluster: str) -> dict[str, Any]:
    """The ``externalClusters`` entry that reads ``source_cluster``'s backups and WAL.

    Through the plugin: the same ``ObjectStore`` with the source's server name (the recovering
    Cluster lists no ``spec.plugins``, so it reads but never archives). In-core: the store inline.
    """
    if store.method == "plugin":
        return {
            "name": RECOVERY_SOURCE,
            "plugin": {
                "name": BARMAN_CLOUD_PLUGIN,
                "parameters": {"barmanObjectName": store.name, "serverName": source_cluster},
            },
        }
    return {
        "name": RECOVERY_SOURCE,
        "barmanObjectStore": barman_object_store(store, server_name=source_cluster),
    }
