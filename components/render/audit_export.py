"""The audit export: new ``audit.log`` rows as JSON lines in a spool a SIEM forwarder reads.

``export.sh`` runs in the pinned PostgreSQL image (psql, coreutils) and appends each batch to
``<spool>/audit.jsonl`` on a PersistentVolume; the SIEM's file forwarder (Splunk Universal
Forwarder, Elastic Agent, Fluent Bit ``tail``, Vector ``file``) tails the spool and keeps its
own read offset there. Exactly once, across kills and restarts:

* Order and position. A row's identity value is taken at INSERT, but rows become visible at
  COMMIT, so ids commit out of order and an id watermark would skip a late commit for good.
  Rows are exported by ``(txid, id)`` instead (``txid``: the writing transaction) and only once
  their transaction is older than every transaction still running
  (``txid_snapshot_xmin``): a transaction that commits later always has a higher ``txid`` than
  everything exported before it. A long transaction delays the export; it never loses a row.
* The position is the spool's own last line (``"txid"`` and ``"id"`` lead every line), so it
  cannot disagree with what was written: no second store to keep in step. A kill in the middle
  of a write leaves a last line without its newline; the next start cuts it off and exports
  those rows again, whole. A line is complete only with its newline.
* Files rotate at a size (``audit-<txid>-<id>.jsonl``, zero-padded, named after their last
  line); the newest rotated file holds the position while ``audit.jsonl`` is empty, so at least
  one is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from components.render import pods
from components.render.baseline_job import (
    CA_DIR,
    CA_KEY,
    POSTGRES_UID,
    BaselineJobSpec,
    database_only_policy,
    psql_environment,
)
from components.render.checksum import content_checksum

SCRIPT_KEY: Final = "export.sh"
QUERY_KEY: Final = "export.sql"
SPOOL_FILE: Final = "audit.jsonl"

# One JSON object per row; "txid" and "id" first (the script reads the position from them).
EXPORT_QUERY: Final = """\
-- The next batch of audit.log after the spool's position (psql -v after_txid, after_id, batch).
SELECT pg_catalog.json_build_object(
    'txid', l.txid,
    'id', l.id,
    'at', l.at,
    'database', pg_catalog.current_database(),
    'op', l.op,
    'schema', l.schema_name,
    'table', l.table_name,
    'role', l.role,
    'sub', l.sub,
    'tenant', l.tenant,
    'cross_tenant', l.cross_tenant,
    'old', l.old_row,
    'new', l.new_row
)
FROM audit.log AS l
WHERE
    (l.txid, l.id) > (:after_txid, :after_id)
    AND l.txid < pg_catalog.txid_snapshot_xmin(pg_catalog.txid_current_snapshot())
ORDER BY l.txid, l.id
LIMIT :batch;
"""

EXPORT_SCRIPT: Final = r"""#!/bin/sh
# audit.log -> JSON lines in $AUDIT_SPOOL, exactly once (components/render/audit_export.py).
# libpq's PG* variables say where and as whom; AUDIT_ONCE=1 exports until caught up and exits.
set -eu
spool="${AUDIT_SPOOL:?}"
batch="${AUDIT_BATCH_SIZE:?}"
interval="${AUDIT_INTERVAL_SECONDS:?}"
rotate_bytes="${AUDIT_ROTATE_BYTES:?}"
keep_files="${AUDIT_KEEP_FILES:?}"
query="$(dirname "$0")/export.sql"
current="$spool/audit.jsonl"
pending="$spool/.batch"

log() { echo "audit-export: $*" >&2; }

# "<txid> <id>" of the JSON line on stdin.
position() {
    sed -n 's/^{"txid" : \([0-9][0-9]*\), "id" : \([0-9][0-9]*\), .*$/\1 \2/p'
}

# A kill in the middle of a write leaves a last line without its newline: cut it off.
repair() {
    [ -s "$current" ] || return 0
    [ "$(tail -c 1 "$current" | od -An -c | tr -d ' ')" = '\n' ] && return 0
    partial=$(tail -n 1 "$current" | wc -c)
    size=$(wc -c <"$current")
    truncate -s $((size - partial)) "$current"
    log "cut an incomplete last line ($partial bytes): its rows are exported again"
}

# The position of the newest complete line: audit.jsonl, else the newest rotated file.
last_position() {
    for file in "$current" $(ls -1r "$spool"/audit-*.jsonl 2>/dev/null); do
        [ -s "$file" ] || continue
        found=$(tail -n 1 "$file" | position)
        if [ -z "$found" ]; then
            log "no position in the last line of $file: refusing to guess (duplicates or loss)"
            exit 1
        fi
        echo "$found"
        return 0
    done
    echo "0 0"
}

rotate() {
    [ -s "$current" ] && [ "$(wc -c <"$current")" -ge "$rotate_bytes" ] || return 0
    set -- $(tail -n 1 "$current" | position)
    mv "$current" "$(printf '%s/audit-%020d-%020d.jsonl' "$spool" "$1" "$2")"
    ls -1r "$spool"/audit-*.jsonl | tail -n +"$((keep_files + 1))" | while read -r old; do
        rm -f "$old"
    done
}

# One batch: fetched whole into .batch, then appended and flushed; prints the row count.
export_batch() {
    at=$(last_position) || exit 1
    set -- $at
    psql -X -q -A -t -v ON_ERROR_STOP=1 -v after_txid="$1" -v after_id="$2" \
        -v batch="$batch" -f "$query" -o "$pending"
    rows=$(wc -l <"$pending")
    if [ "$rows" -gt 0 ]; then
        cat "$pending" >>"$current"
        sync "$current"
    fi
    rm -f "$pending"
    echo "$rows"
}

repair
while :; do
    rows=$(export_batch)
    [ "$rows" -eq 0 ] || log "exported $rows rows"
    rotate
    touch "$spool/.batch-done"  # the liveness probe's heartbeat
    if [ "$rows" -lt "$batch" ]; then
        [ "${AUDIT_ONCE:-0}" = 1 ] && exit 0
        sleep "$interval"
    fi
done
"""


def config_map_data() -> dict[str, str]:
    """The exporter's files: the script and its query."""
    return {SCRIPT_KEY: EXPORT_SCRIPT, QUERY_KEY: EXPORT_QUERY}


def files_checksum() -> str:
    """Changes with the script or the query: the pod restarts onto the new files."""
    return content_checksum(*(part for item in sorted(config_map_data().items()) for part in item))


APP_NAME: Final = "audit-export"
APP_COMPONENT: Final = "audit"
INSTANCE: Final = "audit"
DEPLOYMENT_NAME: Final = "audit-export"
SPOOL_CLAIM: Final = "audit-export-spool"
SPOOL_DIR: Final = "/spool"
FILES_DIR: Final = "/etc/pgplatform/audit-export"
HEARTBEAT: Final = f"{SPOOL_DIR}/.batch-done"
ROTATE_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class AuditExportSpec:
    """Where the exporter reads (the baseline Job's connection) and how it batches."""

    connection: BaselineJobSpec
    """Read-write endpoint, database, sslmode, admin Secret and CA, as the baseline Job has."""
    batch_size: int
    interval_seconds: int
    keep_files: int
    spool_size: str
    storage_class: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"batch_size: 1..100000, got {self.batch_size!r}")
        if not 1 <= self.interval_seconds <= 3600:
            raise ValueError(f"interval_seconds: 1..3600, got {self.interval_seconds!r}")
        if self.keep_files < 1:
            raise ValueError(f"keep_files: at least 1, got {self.keep_files!r}")

    @property
    def stale_after_seconds(self) -> int:
        """How old the heartbeat may get: a few intervals, plus time for a full batch."""
        return 3 * self.interval_seconds + 120


def labels() -> dict[str, str]:
    return pods.labels(APP_NAME, APP_COMPONENT, INSTANCE)


def _environment(spec: AuditExportSpec) -> list[dict[str, Any]]:
    return [
        *psql_environment(spec.connection, application=APP_NAME),
        # The exporter only reads: any write in its session is refused.
        {"name": "PGOPTIONS", "value": "-c default_transaction_read_only=on"},
        {"name": "AUDIT_SPOOL", "value": SPOOL_DIR},
        {"name": "AUDIT_BATCH_SIZE", "value": str(spec.batch_size)},
        {"name": "AUDIT_INTERVAL_SECONDS", "value": str(spec.interval_seconds)},
        {"name": "AUDIT_ROTATE_BYTES", "value": str(ROTATE_BYTES)},
        {"name": "AUDIT_KEEP_FILES", "value": str(spec.keep_files)},
    ]


def _heartbeat_probe(spec: AuditExportSpec) -> dict[str, Any]:
    """Alive while a batch finished within ``stale_after_seconds`` (the script touches it)."""
    check = (
        f"test -f {HEARTBEAT} && test $(( $(date +%s) - $(stat -c %Y {HEARTBEAT}) )) "
        f"-lt {spec.stale_after_seconds}"
    )
    return {
        "exec": {"command": ["sh", "-c", check]},
        "initialDelaySeconds": 30,
        "periodSeconds": 30,
        "failureThreshold": 3,
    }


def deployment_body(spec: AuditExportSpec, *, config_map: pods.Placed) -> dict[str, Any]:
    """One exporter (the spool is a ReadWriteOnce volume and the position lives in it)."""
    conn = spec.connection
    mounts = [
        {"name": "files", "mountPath": FILES_DIR, "readOnly": True},
        {"name": "spool", "mountPath": SPOOL_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "files", "configMap": {"name": config_map, "defaultMode": 0o555}},
        {"name": "spool", "persistentVolumeClaim": {"claimName": SPOOL_CLAIM}},
    ]
    if conn.ca_secret is not None:
        mounts.append({"name": "db-ca", "mountPath": CA_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "db-ca",
                "secret": {
                    "secretName": conn.ca_secret,
                    "items": [{"key": CA_KEY, "path": CA_KEY}],
                    "defaultMode": 0o444,
                },
            }
        )
    probe = _heartbeat_probe(spec)
    container = {
        "name": "exporter",
        "image": conn.image,
        "command": ["sh", f"{FILES_DIR}/{SCRIPT_KEY}"],
        "env": _environment(spec),
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "20m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
        "securityContext": pods.container_security_context(POSTGRES_UID),
        "livenessProbe": probe,
        "readinessProbe": probe,
    }
    pod_spec = pods.hardened_pod_spec(
        containers=[container],
        selector=pods.selector_labels(APP_NAME, INSTANCE),
        volumes=volumes,
        uid=POSTGRES_UID,
    )
    pod_spec.pop("topologySpreadConstraints", None)  # one replica
    return {
        "spec": {
            "replicas": 1,
            # Never two exporters on one spool: the old pod stops before the new one starts.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": pods.selector_labels(APP_NAME, INSTANCE)},
            "template": {
                "metadata": {
                    "labels": labels(),
                    "annotations": {pods.CHECKSUM_ANNOTATION: files_checksum()},
                },
                "spec": pod_spec,
            },
        }
    }


def spool_claim_body(spec: AuditExportSpec) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.spool_size}},
    }
    if spec.storage_class:
        claim["storageClassName"] = spec.storage_class
    return {"spec": claim}


def exporter_network_policy_body(spec: AuditExportSpec) -> dict[str, Any]:
    """Database and DNS only, nothing in: the baseline Job's policy, for the exporter's pods."""
    return database_only_policy(spec.connection, pods.selector_labels(APP_NAME, INSTANCE))
