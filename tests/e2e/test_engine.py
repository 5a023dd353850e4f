"""The program under the real Pulumi engine, against real services (``make e2e``).

One deployment of the ``local`` stack (Pulumi.local.yaml) per run, in this order (the tests
below run in file order and share it):

1. PostgreSQL 15 with TLS only (``tests/integration/pg.py``) as the external database, an admin
   role that may create roles; OpenBao (``bao server -dev``) with KV v2 and Kubernetes auth.
2. ``pulumi preview --policy-pack policy`` (kept in ``build/e2e/preview.txt``), ``pulumi up``.
3. Checks: the database catalog equals the SQL rendering's, every Vault policy grants exactly
   its consumer's secret, the manifests the Kubernetes provider rendered pass the strict schemas
   and equal the offline render's.
4. ``pulumi preview --expect-no-changes``: a second run must be a no-op.
5. A new domain previewed and applied; ``pulumi destroy``; the services stop.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.e2e import catalog
from tests.e2e.harness import (
    ADMIN,
    DATABASE,
    E2E_DIR,
    K8S_AUTH,
    KV_MOUNT,
    OpenBao,
    Project,
    Pulumi,
    engine_bin,
    init_stack,
    manifests_by_key,
    offline_render,
    running_services,
)
from tests.integration.pg import PgCluster, running_cluster
from tests.integration.test_manifests import _kubernetes_validate, validation_errors
from tools.render import REDACTED

pytestmark = pytest.mark.e2e

NEW_DOMAIN: Final = "billing"


@dataclass
class Deployment:
    pulumi: Pulumi
    project: Project
    db: PgCluster
    bao: OpenBao
    admin_password: str
    manifests: Path
    offline: Path
    preview: str


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    engine = engine_bin()
    E2E_DIR.mkdir(parents=True, exist_ok=True)
    for stale in ("logs", "state", "home", "manifests", "offline", "project", "openbao"):
        path = E2E_DIR / stale
        if path.exists():
            subprocess.run(["rm", "-rf", str(path)], check=True)
    with running_services(E2E_DIR) as services:
        project = Project(E2E_DIR / "project")
        manifests = E2E_DIR / "manifests"
        pulumi = init_stack(
            engine,
            project,
            E2E_DIR,
            services,
            {"pgplatform:gitops": {"renderDirectory": str(manifests)}},
        )
        offline = offline_render(project, E2E_DIR / "offline")
        preview = pulumi.stack("preview", "preview", "--policy-pack", "policy", "--diff")
        (E2E_DIR / "preview.txt").write_text(preview)
        pulumi.stack("up", "up", "--yes", "--skip-preview", "--policy-pack", "policy")
        deployed = Deployment(
            pulumi,
            project,
            services.db,
            services.bao,
            services.admin_password,
            manifests,
            offline,
            preview,
        )
        try:
            yield deployed
        finally:
            if not (E2E_DIR / "destroyed").exists():
                pulumi.stack("cleanup-destroy", "destroy", "--yes", "--skip-preview")


def _reference_snapshot(sql_dir: Path) -> catalog.Snapshot:
    """The catalog the SQL rendering produces on a fresh cluster with the same admin role."""
    files = [(p.name, p.read_text()) for p in sorted(sql_dir.glob("*.sql"))]
    access = [f for f in files if f[0].endswith("_access.sql")]
    assert access, f"no access SQL in {sql_dir}"
    with running_cluster() as ref:
        with ref.connect() as conn:
            conn.execute(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE")
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ADMIN}")
        ref.apply_sql(DATABASE, access)
        with ref.connect(DATABASE) as conn:
            return catalog.snapshot(
                conn, appliers={ADMIN, ref.superuser}, rename={ref.superuser: ADMIN}
            )


def _deployed_snapshot(d: Deployment) -> catalog.Snapshot:
    with d.db.connect(DATABASE) as conn:
        return catalog.snapshot(
            conn, appliers={ADMIN, d.db.superuser}, rename={d.db.superuser: ADMIN}
        )


# -- 2. the first preview ---------------------------------------------------------------------
def test_first_preview_creates_the_stack_and_passes_every_policy(deployment: Deployment) -> None:
    """The preview ran the policy pack (a mandatory violation would have failed it)."""
    text = deployment.preview
    assert (E2E_DIR / "preview.txt").read_text() == text
    assert re.search(r"\+ +\d+ to create", text), text[-2000:]
    assert re.search(r"Policy Packs run:\s+Name\s+Version\s+pgplatform-security\S* ", text)
    for package in ("postgresql:index", "vault:index", "vault:kv", "random:index", "kubernetes:"):
        assert package in text, f"no {package} resource in the preview"


# -- 3. the deployed state -------------------------------------------------------------------
def test_catalog_equals_the_sql_rendering(deployment: Deployment) -> None:
    expected = _reference_snapshot(deployment.offline / "sql")
    actual = _deployed_snapshot(deployment)
    assert catalog.differences(actual, expected) == []
    assert expected["roles"], "the SQL rendering created no roles"


def _kv_paths(bao: OpenBao, prefix: str = "") -> list[str]:
    listing = bao.api("LIST", f"{KV_MOUNT}/metadata/{prefix}")
    out: list[str] = []
    for key in (listing.get("data") or {}).get("keys", []):
        if key.endswith("/"):
            out += _kv_paths(bao, prefix + key)
        else:
            out.append(prefix + key)
    return out


def _kv_secrets(bao: OpenBao) -> dict[str, dict[str, str]]:
    return {
        path: bao.api("GET", f"{KV_MOUNT}/data/{path}")["data"]["data"] for path in _kv_paths(bao)
    }


def test_every_vault_policy_grants_exactly_its_own_secret(deployment: Deployment) -> None:
    bao = deployment.bao
    paths = _kv_paths(bao)
    assert paths, "no KV secrets written"
    roles = (bao.api("LIST", f"auth/{K8S_AUTH}/role").get("data") or {}).get("keys", [])
    assert sorted(roles) == sorted(p.replace("/", "-") for p in paths)
    offline_policies = {
        p.stem: p.read_text() for p in (deployment.offline / "files" / "vault").glob("*.hcl")
    }
    assert sorted(offline_policies) == sorted(roles)
    for role in roles:
        info = bao.api("GET", f"auth/{K8S_AUTH}/role/{role}")["data"]
        assert info["token_policies"] == [role]
        assert info["bound_service_account_namespaces"] == ["pgplatform"]
        policy = bao.api("GET", f"sys/policies/acl/{role}")["data"]["policy"]
        assert policy == offline_policies[role]
        own = f"{KV_MOUNT}/data/{role.replace('-', '/', 2)}"
        assert re.findall(r'path "([^"]+)"', policy) == [own]
        token = bao.api(
            "POST",
            "auth/token/create",
            {"policies": [role], "no_default_policy": True, "ttl": "5m"},
        )["auth"]["client_token"]
        checked = [f"{KV_MOUNT}/data/{p}" for p in paths] + [
            f"{KV_MOUNT}/metadata/{p}" for p in paths
        ]
        caps = bao.api("POST", "sys/capabilities", {"token": token, "paths": checked})
        for path in checked:
            assert caps[path] == (["read"] if path == own else ["deny"]), (role, path)


def test_rendered_manifests_pass_the_strict_schemas(deployment: Deployment) -> None:
    kv = _kubernetes_validate()
    documents = manifests_by_key(deployment.manifests)
    assert documents, f"no manifests under {deployment.manifests}"
    problems = [
        f"{key}: {problem}"
        for key, document in documents.items()
        for problem in validation_errors(document, kv)
    ]
    assert not problems, "\n".join(problems)


AUTONAME_REFERENCE: Final = re.compile(r"(?<=[a-z0-9])-[0-9a-f]{8}\b")
AUTONAMED_ANNOTATION: Final = "pulumi.com/autonamed"
SECRETS_CHECKSUM: Final = "pgplatform.io/secrets-checksum"


def _normalised(value: Any) -> Any:
    """Auto-name suffixes cut from every string; empty lists dropped (the provider omits them)."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, str):
        return AUTONAME_REFERENCE.sub("", value)
    return value


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    """The object as both renders must agree on; the differences this removes are explained.

    - Secret payloads: the offline render redacts them; the real render writes the values.
    - Auto-named objects: the engine and the mocks each draw their own random suffix, in the
      object's name and wherever another object refers to it; the Kubernetes provider also
      marks such objects with the ``pulumi.com/autonamed`` annotation.
    - The secrets checksum annotation is keyed with a generated key over the secret values,
      which the offline render only has as placeholders.
    - An empty list the program sets (e.g. a NetworkPolicy's ``ingress: []`` under
      ``policyTypes: [Ingress]``) is omitted by the provider; both mean the same to the API.
    """
    out = json.loads(json.dumps(document))
    if out["kind"] == "Secret":
        for field in ("data", "stringData"):
            if field in out:
                out[field] = REDACTED
    annotations = (out.get("metadata") or {}).get("annotations") or {}
    annotations.pop(AUTONAMED_ANNOTATION, None)
    if SECRETS_CHECKSUM in annotations:
        annotations[SECRETS_CHECKSUM] = REDACTED
    for template in _pod_templates(out):
        template_annotations = (template.get("metadata") or {}).get("annotations") or {}
        if SECRETS_CHECKSUM in template_annotations:
            template_annotations[SECRETS_CHECKSUM] = REDACTED
    if not annotations and "annotations" in (out.get("metadata") or {}):
        del out["metadata"]["annotations"]
    normalised: dict[str, Any] = _normalised(out)
    return normalised


def _pod_templates(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec") or {}
    found = [spec["template"]] if isinstance(spec.get("template"), dict) else []
    job = (spec.get("jobTemplate") or {}).get("spec") or {}
    if isinstance(job.get("template"), dict):
        found.append(job["template"])
    return found


def test_rendered_manifests_equal_the_offline_render(deployment: Deployment) -> None:
    real = manifests_by_key(deployment.manifests)
    offline = manifests_by_key(deployment.offline / "manifests")
    assert sorted(real) == sorted(offline)
    report = []
    for key in sorted(real):
        mine, theirs = _comparable(real[key]), _comparable(offline[key])
        if mine != theirs:
            report.append(
                f"{key}\n--- real\n{yaml.safe_dump(mine, sort_keys=True)}"
                f"--- offline\n{yaml.safe_dump(theirs, sort_keys=True)}"
            )
    (E2E_DIR / "manifest-differences.txt").write_text("\n".join(report))
    assert not report, f"{len(report)} objects differ; see {E2E_DIR / 'manifest-differences.txt'}"


# -- 4. a second run is a no-op ---------------------------------------------------------------
def test_second_preview_is_a_no_op(deployment: Deployment) -> None:
    deployment.pulumi.stack("preview-again", "preview", "--expect-no-changes", "--diff")


# -- 5. change, destroy -----------------------------------------------------------------------
def test_a_new_domain_is_previewed_and_applied(deployment: Deployment) -> None:
    project = deployment.project
    domains = dict(project.config()["pgplatform:domains"])
    domains[NEW_DOMAIN] = {"maxRows": 100}
    project.write_config({"pgplatform:domains": domains})
    preview = deployment.pulumi.stack(
        "preview-domain", "preview", "--policy-pack", "policy", "--diff"
    )
    (E2E_DIR / "preview-domain.txt").write_text(preview)
    assert f"schema-{NEW_DOMAIN}" in preview
    deployment.pulumi.stack("up-domain", "up", "--yes", "--skip-preview", "--policy-pack", "policy")
    with deployment.db.connect(DATABASE) as conn:
        owner = conn.execute(
            "SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
            "WHERE n.nspname = %s",
            (NEW_DOMAIN,),
        ).fetchone()
    assert owner is not None, f"schema {NEW_DOMAIN} not created"
    offline = offline_render(project, E2E_DIR / "offline-domain")
    expected = _reference_snapshot(offline / "sql")
    assert catalog.differences(_deployed_snapshot(deployment), expected) == []
    deployment.pulumi.stack("preview-domain-again", "preview", "--expect-no-changes")


def test_destroy_removes_roles_secrets_and_policies(deployment: Deployment) -> None:
    deployment.pulumi.stack("destroy", "destroy", "--yes", "--skip-preview")
    (E2E_DIR / "destroyed").write_text("")
    with deployment.db.connect(DATABASE) as conn:
        left = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname NOT IN (%s, %s)",
            (ADMIN, deployment.db.superuser),
        ).fetchall()
    assert left == []
    assert _kv_paths(deployment.bao) == []
    policies = deployment.bao.api("LIST", "sys/policies/acl")["data"]["keys"]
    assert sorted(policies) == ["default", "root"]
    state = json.loads(deployment.pulumi.stack("export", "stack", "export"))
    assert [r["type"] for r in state["deployment"].get("resources") or []] in (
        [],
        ["pulumi:pulumi:Stack"],
    )
