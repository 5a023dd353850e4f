"""Per-environment defaults: the one table the stack YAML overrides.

The stack files hold only what differs from here plus ``secure:`` values, so a reviewer sees every
deviation from the safe default in the stack diff. Functions return fresh copies: callers merge
into them, and a shared dict mutated once would leak into the next stack.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from components.render.postgres_cluster import POSTGRES_IMAGE

ENVIRONMENTS: Final = ("staging", "prod")

_RESOURCES_SMALL: Final = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}
_RESOURCES_MEDIUM: Final = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}


_COMMON: Final[dict[str, Any]] = {
    "gateway": {"name": "platform-gateway", "namespace": "gateway"},
    "vault": {
        "address": "https://vault.vault.svc:8200",
        "kvMount": "kv",
        "kubernetesAuthPath": "kubernetes",
        "refreshInterval": "1h",
    },
    "reservedConnections": {"superuser": 3, "replication": 10, "exporters": 3, "migrations": 5},
    "observability": {
        "runbookBaseUrl": "https://github.com/pgplatform/pgplatform/blob/main/docs/runbooks",
        "prometheusNamespace": "monitoring",
        "synthetic": {"enabled": True, "interval": "30s", "timeout": "5s"},
        "loki": {"enabled": False, "datasourceUid": "loki", "ruleLabels": {"loki_rule": "1"}},
        "graphql": {
            "metrics": True,
            "requestLog": True,
            "maxOperationNames": 100,
            "slowSeconds": 1.0,
        },
    },
    "postgres": {"image": POSTGRES_IMAGE},
    "backup": {
        "method": "plugin",
        "retention": "30d",
        "schedule": "0 0 2 * * *",
        "restoreCheckSchedule": "0 4 1 * *",
    },
    "graphql": {
        "schemas": ["identity"],
        "dbPool": 5,
        "resources": _RESOURCES_SMALL,
    },
    "gitops": {},
    # The advisor's weekly run (Mondays 05:00 UTC, before the working week).
    "advisor": {"schedule": "0 5 * * 1"},
    # Schema and privilege changes in the server log, in every environment.
    "audit": {
        "pgauditLog": ["ddl", "role"],
        "export": {
            "enabled": True,
            "batchSize": 1000,
            "intervalSeconds": 30,
            "keepFiles": 16,
            "spoolSize": "2Gi",
        },
    },
    # Change data capture into the analytics database: off until tables are listed.
    "cdc": {"database": "analytics", "tables": {}},
}

_STACK_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "staging": {
        "namespace": "pgplatform",
        "postgres": {
            "mode": "cnpg",
            "instances": 2,
            "storageSize": "20Gi",
            "maxConnections": 200,
            "database": "app",
            "port": 5432,
            "adminUser": "pgplatform_admin",
            "sslmode": "require",
            # Slow plans with row counts from 250 ms on: staging is where plans get read.
            "queryInsights": {
                "statementsMax": 10000,
                "statementsTrack": "all",
                "autoExplainMinDuration": "250ms",
                "autoExplainAnalyze": True,
                "autoExplainSampleRate": 1.0,
                "qualstats": False,
            },
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"},
            },
        },
        "roles": {
            "statementTimeout": {
                "anonymous": "3s",
                "user": "5s",
                "editor": "10s",
                "admin": "30s",
                "service": "30s",
            },
        },
        "auth": {
            "mode": "hs256",
            "roleClaimKey": ".role",
            "anonymous": True,
        },
        "pgbouncer": {
            "replicas": 2,
            "maxClientConn": 500,
            "defaultPoolSize": 10,
            "reservePoolSize": 2,
            "serverIdleTimeout": "10m",
            "queryWaitTimeout": "30s",
            "serverTlsSslmode": "require",
            "resources": _RESOURCES_SMALL,
        },
        "observability": {
            "alerts": {
                "apiErrorRatio": 0.05,
                "apiDeniedRatio": 0.2,
                "apiMinRequestRate": 0.5,
                "dbConnectionsShare": 0.85,
                "poolClientsWaiting": 10,
                "longestTransactionSeconds": 600,
                "replicationLagSeconds": 120,
                "backupAgeHours": 26,
                "restoreCheckMaxAgeDays": 35,
            },
        },
        "backup": {"enabled": False},
        "graphql": {"enabled": True, "graphiql": True, "replicas": {"min": 1, "max": 2}},
        "cdc": {"maxSlotWalKeepSize": "5Gi"},
        "advisor": {"enabled": True},
        "protectData": False,
    },
    "prod": {
        "namespace": "pgplatform",
        "postgres": {
            "mode": "cnpg",
            "instances": 3,
            "storageSize": "100Gi",
            "maxConnections": 400,
            "database": "app",
            "port": 5432,
            "adminUser": "pgplatform_admin",
            "sslmode": "verify-full",
            # Written by the deploy job from the Cluster's CA Secret (docs/database.md).
            "providerCaFile": "ca/postgres-ca.crt",
            # Plans of statements over 1 s, without instrumenting every statement's execution.
            "queryInsights": {
                "statementsMax": 10000,
                "statementsTrack": "all",
                "autoExplainMinDuration": "1s",
                "autoExplainAnalyze": False,
                "autoExplainSampleRate": 1.0,
                "qualstats": False,
            },
            "resources": {
                "requests": {"cpu": "2", "memory": "4Gi"},
                "limits": {"cpu": "4", "memory": "8Gi"},
            },
        },
        "roles": {
            "statementTimeout": {
                "anonymous": "3s",
                "user": "5s",
                "editor": "10s",
                "admin": "30s",
                "service": "30s",
            },
        },
        "auth": {
            "mode": "jwks",
            "roleClaimKey": ".role",
            "anonymous": False,
        },
        "pgbouncer": {
            "replicas": 3,
            "maxClientConn": 1000,
            "defaultPoolSize": 20,
            "reservePoolSize": 5,
            "serverIdleTimeout": "10m",
            "queryWaitTimeout": "15s",
            "serverTlsSslmode": "verify-full",
            "resources": _RESOURCES_MEDIUM,
        },
        "observability": {
            "alerts": {
                "apiErrorRatio": 0.01,
                "apiDeniedRatio": 0.1,
                "apiMinRequestRate": 1.0,
                "dbConnectionsShare": 0.8,
                "poolClientsWaiting": 5,
                "longestTransactionSeconds": 300,
                "replicationLagSeconds": 30,
                "backupAgeHours": 26,
                "restoreCheckMaxAgeDays": 35,
            },
        },
        "backup": {"enabled": True},
        "graphql": {"enabled": False, "graphiql": False, "replicas": {"min": 2, "max": 4}},
        # On once the deploy workflow passes the image it pushed (advisor.image).
        "advisor": {"enabled": False},
        # What holds data survives a destroy or a rename; lifting it is this explicit key.
        "cdc": {"maxSlotWalKeepSize": "20Gi"},
        "protectData": True,
    },
}

_DOMAIN_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "staging": {
        "replicas": {"min": 1, "max": 3},
        "maxRows": 1000,
        "readFromReplicas": False,
        "dbPool": 5,
        "resources": _RESOURCES_SMALL,
        "logLevel": "info",
        "serverTiming": True,
        "slo": {"availability": 99.5, "latencyP95Ms": 500, "window": "30d"},
    },
    "prod": {
        "replicas": {"min": 2, "max": 8},
        "maxRows": 1000,
        "readFromReplicas": False,
        "dbPool": 10,
        "resources": _RESOURCES_MEDIUM,
        "logLevel": "error",
        "serverTiming": False,
        "slo": {"availability": 99.9, "latencyP95Ms": 250, "window": "30d"},
    },
}


def stack_defaults(environment: str) -> dict[str, Any]:
    """A fresh copy of the defaults of ``environment`` (one of ``ENVIRONMENTS``)."""
    return deep_merge(copy.deepcopy(_COMMON), copy.deepcopy(_STACK_DEFAULTS[environment]))


def domain_defaults(environment: str) -> dict[str, Any]:
    """A fresh copy of the defaults every domain entry starts from."""
    return copy.deepcopy(_DOMAIN_DEFAULTS[environment])


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested mappings merge; lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
