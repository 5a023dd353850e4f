"""Nightly base backups and the monthly proof that they restore.

A backup nobody has restored is a hope, not a backup. Once a month a CronJob recovers the latest
base backup plus the archived WAL into a throw-away one-instance Cluster, waits until it is
ready, runs a check query inside it, and deletes it again (also when anything fails). The Job's
own success or failure is the result: ``RestoreVerificationFailed`` and
``RestoreVerificationStale`` watch it through kube-state-metrics.

Least privilege for that Job:

* its ServiceAccount may ``create`` Clusters (RBAC cannot name the object of a create), and
  ``get``/``delete`` only the one fixed recovery Cluster, and ``get``/exec only its first pod;
* a ValidatingAdmissionPolicy closes the gap RBAC leaves: Clusters created by that
  ServiceAccount must carry the fixed name, bootstrap by recovery from our object store only,
  and neither archive anywhere, nor open ``pg_hba``, nor expose a Service;
* the check runs ``psql`` inside the recovered instance over its local socket, so the Job never
  holds a database password.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from components.render import pods, schedules
from components.render.metrics_catalog import TargetNaming
from components.render.postgres_cluster import (
    BACKUP_METHODS,
    BARMAN_CLOUD_PLUGIN,
    CNPG_API_VERSION,
)

KUBECTL_IMAGE: Final = "registry.k8s.io/kubectl:v1.33.4"
"""Kubernetes' own kubectl image (debian-base with bash, coreutils and jq since v1.28)."""

MOUNT_DIR: Final = "/etc/restore-check"
SCRIPT_KEY: Final = "restore-check.sh"
CLUSTER_KEY: Final = "cluster.json"
CHECK_SQL_KEY: Final = "check.sql"
POSTGRES_CONTAINER: Final = "postgres"
"""Container of a CloudNativePG instance pod that runs PostgreSQL (and has ``psql``)."""
SOCKET_DIR: Final = "/controller/run"
"""Unix socket directory of a CloudNativePG instance (peer authentication for ``postgres``)."""
RECOVERY_SUFFIX: Final = "restored"
HOME_DIR: Final = "/home/restore-check"
"""Writable HOME (an emptyDir) for kubectl's discovery cache; the root filesystem is read-only."""
TOKEN_ANNOTATION: Final = "pgplatform.io/service-account-token"  # noqa: S105 - a name
"""Pod-template annotation saying why a pod mounts its ServiceAccount token (policy pack)."""
API_PORTS: Final = (443, 6443)
"""Ports the Kubernetes API is reached on (Service ``kubernetes`` and its endpoints)."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def check_kubernetes_schedule(key: str, schedule: str) -> str:
    """A CronJob schedule (``render.schedules``); the error names ``key``."""
    try:
        return schedules.check_cronjob_schedule(schedule)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


def check_cnpg_schedule(key: str, schedule: str) -> str:
    """A ScheduledBackup schedule: six fields, seconds first (not the CronJob format)."""
    try:
        return schedules.check_cnpg_schedule(schedule)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


def scheduled_backup_spec(*, cluster: str, schedule: str, method: str = "plugin") -> dict[str, Any]:
    """The ``spec`` of the nightly ScheduledBackup of ``cluster`` to its object store.

    ``immediate`` takes the first base backup right away, so point-in-time recovery works from
    the first deploy on instead of from the first night. Through the plugin the backup runs on
    a standby when one is healthy (the in-core form sets that on the Cluster), keeping the
    primary's I/O for the API.
    """
    check_cnpg_schedule("schedule", schedule)
    if method not in BACKUP_METHODS:
        raise ValueError(f"method: one of {list(BACKUP_METHODS)}, got {method!r}")
    spec: dict[str, Any] = {
        "schedule": schedule,
        "cluster": {"name": cluster},
        "method": method,
        "immediate": True,
        "backupOwnerReference": "self",
    }
    if method == "plugin":
        spec["pluginConfiguration"] = {"name": BARMAN_CLOUD_PLUGIN}
        spec["target"] = "prefer-standby"
    return spec


@dataclass(frozen=True, kw_only=True)
class RestoreCheckInput:
    """The monthly restore verification of one CloudNativePG cluster."""

    namespace: str
    source_cluster: str
    database: str
    schemas: tuple[str, ...]
    """Schemas the restored database must contain (every table in them is read in full)."""
    schedule: str
    destination_path: str
    """Object store the recovery may read from (pinned by the admission policy)."""
    object_store: str | None = None
    """The plugin's ``ObjectStore`` the recovery reads through; None: the in-core method."""
    timeout_seconds: int = 4 * 3600
    """How long the recovery may take before the check counts as failed."""
    image: str = KUBECTL_IMAGE
    naming: TargetNaming = field(default_factory=TargetNaming)
    uid: int = pods.DEFAULT_UID

    def __post_init__(self) -> None:
        for name in ("namespace", "source_cluster"):
            value = getattr(self, name)
            if not _DNS_LABEL.match(value) or len(value) > 63:
                raise ValueError(f"{name}: not a DNS label, got {value!r}")
        if len(self.recovery_cluster) > 50:
            raise ValueError(
                f"source_cluster: {self.source_cluster!r} is too long for the recovery Cluster "
                f"name {self.recovery_cluster!r} (at most 50 characters)"
            )
        if len(self.cronjob_name) > 52:
            raise ValueError(f"naming: CronJob name {self.cronjob_name!r} exceeds 52 characters")
        if not _IDENT.match(self.database):
            raise ValueError(f"database: not a plain identifier, got {self.database!r}")
        if not self.schemas:
            raise ValueError("schemas: at least one schema must be checked")
        for schema in self.schemas:
            if not _IDENT.match(schema):
                raise ValueError(f"schemas: {schema!r} is not a plain identifier")
        check_kubernetes_schedule("schedule", self.schedule)
        if self.object_store is not None and not _DNS_NAME.match(self.object_store):
            raise ValueError(f"object_store: not an object name, got {self.object_store!r}")
        if not 600 <= self.timeout_seconds <= 24 * 3600:
            raise ValueError(f"timeout_seconds: 600..86400, got {self.timeout_seconds}")
        if ":" not in self.image.rsplit("/", 1)[-1] or self.image.endswith(":latest"):
            raise ValueError(f"image: pin a version, got {self.image!r}")

    @property
    def cronjob_name(self) -> str:
        """Fixed: the alerts select the CronJob and its Jobs by this name."""
        name = self.naming.restore_check_cronjob.format(cluster=self.source_cluster)
        if not _DNS_LABEL.match(name):
            raise ValueError(f"naming.restore_check_cronjob: {name!r} is not a DNS label")
        return name

    @property
    def recovery_cluster(self) -> str:
        return f"{self.source_cluster}-{RECOVERY_SUFFIX}"

    @property
    def recovery_pod(self) -> str:
        """CloudNativePG names the first instance ``<cluster>-1``."""
        return f"{self.recovery_cluster}-1"


def check_sql(schemas: Sequence[str]) -> str:
    """SQL run in the recovered database; any error fails the check.

    Proves the server finished recovery and was promoted, that every expected schema exists,
    and reads every table of those schemas in full: with data checksums on (initdb sets them),
    a damaged page fails the read instead of passing unnoticed.
    """
    if not schemas:
        raise ValueError("schemas: at least one schema must be checked")
    for schema in schemas:
        if not _IDENT.match(schema):
            raise ValueError(f"schemas: {schema!r} is not a plain identifier")
    array = "ARRAY[" + ", ".join(f"'{s}'" for s in schemas) + "]::text[]"
    return "\n".join(
        [
            "-- Restore verification: runs in the recovered database as its superuser.",
            "\\set ON_ERROR_STOP on",
            "DO $check$",
            "DECLARE",
            f"  expected text[] := {array};",
            "  missing text[];",
            "  rel regclass;",
            "  tables integer := 0;",
            "  total bigint := 0;",
            "  n bigint;",
            "BEGIN",
            "  IF pg_catalog.pg_is_in_recovery() THEN",
            "    RAISE EXCEPTION 'restore check: the server is still in recovery';",
            "  END IF;",
            "  SELECT pg_catalog.array_agg(s ORDER BY s) INTO missing",
            "    FROM pg_catalog.unnest(expected) AS s",
            "   WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_namespace ns"
            " WHERE ns.nspname OPERATOR(pg_catalog.=) s);",
            "  IF missing IS NOT NULL THEN",
            "    RAISE EXCEPTION 'restore check: schemas missing: %', missing;",
            "  END IF;",
            "  FOR rel IN",
            "    SELECT c.oid::regclass FROM pg_catalog.pg_class c",
            "      JOIN pg_catalog.pg_namespace ns ON ns.oid OPERATOR(pg_catalog.=) c.relnamespace",
            "     WHERE ns.nspname OPERATOR(pg_catalog.=) ANY (expected)"
            " AND c.relkind OPERATOR(pg_catalog.=) 'r'",
            "     ORDER BY 1",
            "  LOOP",
            "    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s', rel) INTO n;",
            "    tables := tables + 1;",
            "    total := total + n;",
            "  END LOOP;",
            "  RAISE NOTICE 'restore check passed: % schemas, % tables, % rows read',",
            "    pg_catalog.array_length(expected, 1), tables, total;",
            "END",
            "$check$;",
            "",
        ]
    )


def restore_check_script(inp: RestoreCheckInput) -> str:
    """The Job's bash script (kubectl image). Exit status 0 only when the check passed.

    An EXIT trap deletes the recovery Cluster whatever happens, and TERM/INT (the Job's
    deadline, a node drain) are turned into an exit so the trap runs then too. Leftovers of a
    run that could not clean up (a lost node) are deleted before the next run starts.
    """
    q = shlex.quote
    return "\n".join(
        [
            "#!/bin/bash",
            "# Restore verification: recover the latest backup, check it, delete it again.",
            "set -euo pipefail",
            f"NAMESPACE={q(inp.namespace)}",
            f"CLUSTER={q(inp.recovery_cluster)}",
            f"POD={q(inp.recovery_pod)}",
            f"DATABASE={q(inp.database)}",
            f"TIMEOUT={inp.timeout_seconds}",
            f"DIR={q(MOUNT_DIR)}",
            "RESOURCE=clusters.postgresql.cnpg.io",
            "",
            'log() { printf \'%s restore-check: %s\\n\' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }',
            'k() { kubectl --namespace "$NAMESPACE" "$@"; }',
            "",
            "gone() {",
            '  [ -z "$(k get "$RESOURCE" "$CLUSTER" --ignore-not-found -o name)" ]',
            "}",
            "",
            "delete_cluster() {",
            '  k delete "$RESOURCE" "$CLUSTER" --ignore-not-found --wait=false >/dev/null',
            "  local waited=0",
            "  until gone; do",
            '    if [ "$waited" -ge 600 ]; then log "Cluster $CLUSTER still exists"; return 1; fi',
            "    sleep 5",
            "    waited=$((waited + 5))",
            "  done",
            "}",
            "",
            "cleanup() {",
            "  local status=$?",
            "  trap - EXIT",
            '  log "deleting Cluster $CLUSTER"',
            "  delete_cluster || status=1",
            '  if [ "$status" -eq 0 ]; then log "PASSED"; else log "FAILED (exit $status)"; fi',
            '  exit "$status"',
            "}",
            "",
            "ready() {",
            '  [ "$(k get "$RESOURCE" "$CLUSTER" \\',
            '    -o jsonpath=\'{.status.conditions[?(@.type=="Ready")].status}\')" = True ]',
            "}",
            "",
            'log "removing leftovers of an earlier run"',
            "delete_cluster",
            "trap cleanup EXIT",
            "trap 'exit 143' TERM INT",
            'log "creating Cluster $CLUSTER from the latest backup"',
            'k create -f "$DIR/cluster.json" >/dev/null',
            "deadline=$((SECONDS + TIMEOUT))",
            "until ready; do",
            '  if [ "$SECONDS" -ge "$deadline" ]; then',
            '    log "Cluster $CLUSTER not ready after ${TIMEOUT}s"',
            "    exit 1",
            "  fi",
            "  sleep 15",
            "done",
            'log "Cluster $CLUSTER is ready; running the check query"',
            f'k exec -i "$POD" -c {POSTGRES_CONTAINER} -- \\',
            f'  psql -X -q -h {SOCKET_DIR} -U postgres -d "$DATABASE" -f - < "$DIR/check.sql"',
            "",
        ]
    )


def recovery_cluster_manifest(inp: RestoreCheckInput, spec: dict[str, Any]) -> dict[str, Any]:
    """The Cluster the Job creates (``spec`` from ``postgres_cluster.recovery_cluster_spec``)."""
    return {
        "apiVersion": CNPG_API_VERSION,
        "kind": "Cluster",
        "metadata": {
            "name": inp.recovery_cluster,
            "namespace": inp.namespace,
            "labels": labels(inp),
        },
        "spec": spec,
    }


def config_map_data(inp: RestoreCheckInput, recovery_manifest: dict[str, Any]) -> dict[str, str]:
    """Files of the Job: the script, the Cluster to create and the check query."""
    return {
        SCRIPT_KEY: restore_check_script(inp),
        CLUSTER_KEY: json.dumps(recovery_manifest, indent=2, sort_keys=True) + "\n",
        CHECK_SQL_KEY: check_sql(inp.schemas),
    }


def role_rules(inp: RestoreCheckInput) -> list[dict[str, Any]]:
    """RBAC of the Job: create Clusters; read/delete only the recovery Cluster and its pod."""
    group = CNPG_API_VERSION.split("/", 1)[0]
    return [
        # RBAC cannot restrict a create by name; the admission policy pins the name.
        {"apiGroups": [group], "resources": ["clusters"], "verbs": ["create"]},
        {
            "apiGroups": [group],
            "resources": ["clusters"],
            "resourceNames": [inp.recovery_cluster],
            "verbs": ["get", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "resourceNames": [inp.recovery_pod],
            "verbs": ["get"],
        },
        # kubectl >= 1.30 execs over WebSocket (an HTTP GET); older clients POST (create).
        {
            "apiGroups": [""],
            "resources": ["pods/exec"],
            "resourceNames": [inp.recovery_pod],
            "verbs": ["get", "create"],
        },
    ]


def _empty(parent: str, field: str) -> str:
    """CEL: ``parent.field`` is absent or an empty list (a defaulting webhook may add ``[]``)."""
    return f"(!has({parent}.{field}) || size({parent}.{field}) == 0)"


def _reads_only_our_store(inp: RestoreCheckInput) -> str:
    """CEL over one ``externalClusters`` entry ``c``: it reads this stack's backups, nothing else.

    Through the plugin: exactly our ``ObjectStore`` and the source's server name (the plugin
    reads the bucket and credentials from that object, so nothing else needs pinning). In-core:
    the inline store with our destination path.
    """
    if inp.object_store is not None:
        plugin = "c.plugin"
        params = f"{plugin}.parameters"
        return (
            f"has({plugin}) && {plugin}.name == '{BARMAN_CLOUD_PLUGIN}'"
            f" && has({params}) && size({params}) == 2"
            f" && {params}.barmanObjectName == '{inp.object_store}'"
            f" && {params}.serverName == '{inp.source_cluster}'"
            " && !has(c.barmanObjectStore) && !has(c.connectionParameters)"
        )
    path = inp.destination_path.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"has(c.barmanObjectStore) && c.barmanObjectStore.destinationPath == '{path}'"
        " && !has(c.connectionParameters) && !has(c.plugin)"
    )


def service_account_subject(inp: RestoreCheckInput, service_account: str) -> str:
    return f"system:serviceaccount:{inp.namespace}:{service_account}"


def admission_policy_spec(inp: RestoreCheckInput, service_account: str) -> dict[str, Any]:
    """ValidatingAdmissionPolicy ``spec``: what the Job's ServiceAccount may create, exactly.

    Applies only to requests of that ServiceAccount (``matchConditions``); everyone else's
    Clusters are untouched. Each rule names what it prevents.
    """
    user = service_account_subject(inp, service_account)
    recovery = "object.spec.bootstrap.recovery"
    stores = "object.spec.externalClusters"
    validations = [
        (
            f"object.metadata.name == '{inp.recovery_cluster}'",
            f"the restore check may only create the Cluster {inp.recovery_cluster}",
        ),
        (
            "object.spec.instances == 1",
            "the recovery Cluster has exactly one instance",
        ),
        (
            f"has(object.spec.bootstrap) && has({recovery})"
            " && !has(object.spec.bootstrap.initdb)"
            " && !has(object.spec.bootstrap.pg_basebackup)"
            f" && has({recovery}.source) && !has({recovery}.volumeSnapshots)",
            "the Cluster must bootstrap by recovery from the object store",
        ),
        (
            f"has({stores}) && {stores}.all(c, {_reads_only_our_store(inp)})",
            "the recovery may only read this stack's object store, never connect to a server",
        ),
        (
            f"!has(object.spec.backup) && {_empty('object.spec', 'plugins')}"
            " && !has(object.spec.replica)",
            "the recovery Cluster must not archive or replicate anywhere",
        ),
        (
            "!has(object.spec.postgresql) || ("
            "(!has(object.spec.postgresql.pg_hba) || object.spec.postgresql.pg_hba.all(l,"
            " l.startsWith('hostssl ') && l.endsWith(' scram-sha-256')))"
            f" && {_empty('object.spec.postgresql', 'pg_ident')})",
            "the recovery Cluster keeps TLS + SCRAM authentication",
        ),
        (
            "!has(object.spec.managed) || !has(object.spec.managed.services)"
            f" || {_empty('object.spec.managed.services', 'additional')}",
            "the recovery Cluster exposes no extra Service",
        ),
    ]
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [CNPG_API_VERSION.split("/", 1)[0]],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["clusters"],
                }
            ]
        },
        "matchConditions": [
            {
                "name": "restore-check-service-account",
                "expression": f"request.userInfo.username == '{user}'",
            }
        ],
        "validations": [{"expression": expr, "message": message} for expr, message in validations],
    }


def admission_binding_spec(inp: RestoreCheckInput, policy_name: pods.Placed) -> dict[str, Any]:
    """Binds the policy to the stack's namespace, denying what it rejects."""
    return {
        "policyName": policy_name,
        "validationActions": ["Deny"],
        "matchResources": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": inp.namespace}}
        },
    }


def labels(inp: RestoreCheckInput) -> dict[str, str]:
    """Labels of every restore-check object; the Job pods select on the ``selector`` subset."""
    return pods.labels("restore-check", "backup", inp.source_cluster)


def cronjob_spec(
    inp: RestoreCheckInput, *, config_map: pods.Placed, service_account: str
) -> dict[str, Any]:
    """CronJob ``spec``: one run at a time, no retries (a failure must surface), history kept.

    No TTL on finished Jobs: kube-state-metrics must keep seeing the failed Job until the next
    run, or ``RestoreVerificationFailed`` would resolve by itself.
    """
    selector = pods.selector_labels("restore-check", inp.source_cluster)
    container = {
        "name": "restore-check",
        "image": inp.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", f"{MOUNT_DIR}/{SCRIPT_KEY}"],
        "env": [{"name": "HOME", "value": HOME_DIR}],
        "volumeMounts": [
            {"name": "files", "mountPath": MOUNT_DIR, "readOnly": True},
            {"name": "home", "mountPath": HOME_DIR},
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": pods.container_security_context(inp.uid),
    }
    pod_spec = pods.hardened_pod_spec(
        containers=[container],
        selector=selector,
        service_account=service_account,
        automount_token=True,
        volumes=[
            {"name": "files", "configMap": {"name": config_map, "defaultMode": 0o444}},
            {"name": "home", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
        uid=inp.uid,
    )
    pod_spec["restartPolicy"] = "Never"
    # Time for the EXIT trap to delete the recovery Cluster after SIGTERM.
    pod_spec["terminationGracePeriodSeconds"] = 120
    return schedules.check_cronjob_spec(
        schedule=inp.schedule,
        labels=labels(inp),
        # Recovery time, plus the wait for leftovers, plus the cleanup.
        deadline_seconds=inp.timeout_seconds + 1800,
        template={
            "metadata": {
                "labels": labels(inp),
                "annotations": {
                    TOKEN_ANNOTATION: "creates, waits for, execs into and deletes the "
                    "recovery Cluster (Role and admission policy limit it to that one)"
                },
            },
            "spec": pod_spec,
        },
    )


def network_policy_spec(
    inp: RestoreCheckInput, *, dns_namespace: str = "kube-system"
) -> dict[str, Any]:
    """The Job pod talks to the Kubernetes API (and DNS) only; nothing may connect to it."""
    return {
        "podSelector": {"matchLabels": pods.selector_labels("restore-check", inp.source_cluster)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [
            {"ports": [{"protocol": "TCP", "port": port} for port in API_PORTS]},
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": dns_namespace}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
        ],
    }
