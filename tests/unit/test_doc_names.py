"""Every object a runbook or doc names in a ``kubectl`` command exists in the rendered stacks.

An operator paged at night copies ``kubectl -n $NS logs deploy/<domain>-api`` from a runbook; a
generated name (``identity-api-deployment-1a2b3c4d``) or a label the pods do not carry turns
that into "NotFound" when it matters most. The commands are read from the Markdown, their
placeholders filled in per stack, and each named object (``kind/name``, ``get <kind> <name>``,
``-l`` selectors on our labels, the ``kubectl cnpg`` cluster) looked up in the render of
staging and prod (and of an external-database prod for the objects only that mode has).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_program, stack_config
from tests.unit.test_observability import EXTERNAL
from tools.mocks import RecordingMocks

pytestmark = pytest.mark.unit

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
CLUSTER = "postgres-db"

KINDS = {
    "deploy": "Deployment",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "cronjob": "CronJob",
    "cronjobs": "CronJob",
    "job": "Job",
    "jobs": "Job",
    "configmap": "ConfigMap",
    "configmaps": "ConfigMap",
    "cm": "ConfigMap",
    "secret": "Secret",
    "secrets": "Secret",
    "cluster": "Cluster",
    "clusters": "Cluster",
    "externalsecret": "ExternalSecret",
    "externalsecrets": "ExternalSecret",
    "scheduledbackup": "ScheduledBackup",
    "scheduledbackups": "ScheduledBackup",
    "svc": "Service",
    "service": "Service",
    "pod": "Pod",
    "pods": "Pod",
    "backup": "Backup",
    "backups": "Backup",
    "events": "Event",
    "subscription": "Subscription",
    "subscriptions": "Subscription",
}
RUNTIME_KINDS = frozenset({"Pod", "Backup", "Event"})
"""Objects the cluster creates at run time (pods, CloudNativePG backups, events): their names
are not in any render; a selector on them is still checked where it uses our labels."""
OUR_LABEL = "app.kubernetes.io/"
CNPG_SECRETS = ("-ca", "-server", "-replication", "-app", "-superuser")
"""Secrets CloudNativePG creates for every Cluster ``<cluster><suffix>``."""

CONDITIONAL: Mapping[str, str] = {
    r"Deployment/postgres-exporter": "prod-external",
    r"Pod/app\.kubernetes\.io/name=postgres-exporter": "prod-external",
    r"CronJob/postgres-db-restore-check": "prod",
    r"ConfigMap/app\.kubernetes\.io/name=restore-check": "prod",
    r"Secret/[a-z-]+-postgrest-jwks": "prod",
    # Change data capture: the staging stack publishes tables, prod does not (yet).
    r"Subscription/postgres-db-analytics-cdc": "staging",
    r"(Job|ConfigMap)/app\.kubernetes\.io/name=cdc": "staging",
    r"CronJob/postgres-advisor": "staging",
    r"Deployment/graphql-api": "staging",
    r"Pod/app\.kubernetes\.io/name=postgraphile": "staging",
}
"""References to objects only some stacks have, and the render that must have them: the
exporter exists for an external database only, the restore check where backups are on, the
JWKS Secrets where tokens are verified with the identity provider's keys (auth.mode jwks), the
change data capture objects where cdc.tables lists tables, the advisor's CronJob where
``advisor.enabled`` (staging by default), the GraphQL pilot where it is enabled (staging)."""
CREATED_BY_THE_PROCEDURE = frozenset({"Cluster/postgres-db-pitr"})
"""docs/backups.md creates this recovery cluster itself (``kubectl create -f recovery.json``)."""


@dataclass(frozen=True)
class Reference:
    """One object a command names: by name, or by a label selector."""

    where: str
    kind: str
    name: str | None = None
    selector: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name or self.selector}"


@dataclass
class Render:
    """The Kubernetes objects of one rendered stack."""

    namespace: str
    domains: tuple[str, ...]
    objects: list[dict[str, Any]]

    def named(self, kind: str, name: str) -> bool:
        if kind == "Secret":  # written by External Secrets, or by CloudNativePG for a Cluster
            return any(
                (o["kind"] == "ExternalSecret" and o["spec"]["target"]["name"] == name)
                or (
                    o["kind"] == "Cluster"
                    and name in {o["metadata"]["name"] + suffix for suffix in CNPG_SECRETS}
                )
                for o in self.objects
            )
        return any(o["kind"] == kind and o["metadata"].get("name") == name for o in self.objects)

    def selected(self, kind: str, selector: str) -> bool:
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        for o in self.objects:
            if kind == "Pod":
                labels = _template_labels(o)
            elif o["kind"] == kind:
                labels = o["metadata"].get("labels") or {}
            else:
                continue
            if labels and all(labels.get(k) == v for k, v in wanted.items()):
                return True
        return False


def _template_labels(o: Mapping[str, Any]) -> Mapping[str, str]:
    spec = o.get("spec") or {}
    if o["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    labels: Mapping[str, str] = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    return labels


def commands(text: str) -> Iterator[str]:
    """``kubectl`` commands of a Markdown text: code lines (continuations joined) and spans."""
    text = re.sub(r"\\\n\s*", " ", text)
    yield from re.findall(r"`([^`]*kubectl[^`]*)`", text)
    for line in text.splitlines():
        if line.lstrip().startswith("kubectl") and "`" not in line:
            yield line.strip()


def _substitute(command: str, render: Render, domain: str) -> str:
    return (
        command.replace("$NS", render.namespace)
        .replace("<namespace>", render.namespace)
        .replace("$CLUSTER", CLUSTER)
        .replace("<cluster>", CLUSTER)
        .replace("<domain>", domain)
    )


def _words(command: str) -> tuple[list[str], str | None, str | None]:
    """Positional words after ``kubectl`` (``--from=`` values included), ``-l``, ``-n``."""
    command = re.sub(r"<[^<>\s][^<>]*>", "<any>", command)
    command = re.split(r"\s[|;#<>]|\$\(", command)[0]  # pipes, comments, redirections
    try:
        words = shlex.split(command)[1:]
    except ValueError:
        words = command.split()[1:]
    if "--" in words:
        words = words[: words.index("--")]
    positional: list[str] = []
    selector = None
    namespace = None
    takes_value = {"-n", "--namespace", "-c", "-o", "-f", "--field-selector", "--sort-by"}
    pending = None
    for word in words:
        if pending is not None:
            selector = word if pending in ("-l", "--selector") else selector
            namespace = word if pending in ("-n", "--namespace") else namespace
            pending = None
        elif word in takes_value or word in ("-l", "--selector"):
            pending = word
        elif word.startswith("--from="):
            positional.append(word.removeprefix("--from="))
        elif not word.startswith("-"):
            positional.append(word)
    return positional, selector, namespace


def _selector_references(where: str, kinds: list[str], selector: str) -> Iterator[Reference]:
    parts = selector.split(",")
    for part in parts:
        key, _, value = part.partition("=")
        if key == "cnpg.io/cluster":
            yield Reference(where, "Cluster", name=value)
    if all(p.startswith(OUR_LABEL) and "=" in p for p in parts):
        yield from (Reference(where, kind, selector=selector) for kind in kinds)


def references(command: str, where: str, namespace: str) -> Iterator[Reference]:
    """The objects one (substituted) command names in the stack's ``namespace`` (another
    namespace is the cluster's, e.g. an operator's); placeholders left in mean "any"."""
    positional, selector, given = _words(command)
    if not positional or (given is not None and given != namespace):
        return
    verb, rest = positional[0], positional[1:]
    if verb == "cnpg":
        if len(rest) >= 2 and not _placeholder(rest[1]):
            yield Reference(where, "Cluster", name=rest[1])
        return
    if verb == "rollout":
        rest = rest[1:]
    for word in rest:
        type_, _, name = word.partition("/")
        if name and type_ in KINDS and not _placeholder(name):
            yield Reference(where, KINDS[type_], name=name)
    typed = [w for w in rest if "/" not in w]
    if not typed or typed[0].split(",")[0] not in KINDS:
        return
    kinds = [KINDS[t] for t in typed[0].split(",") if t in KINDS]
    # ``create job NAME`` names a new object; ``annotate`` takes key=value pairs.
    names = [] if verb == "create" else [n for n in typed[1:] if "=" not in n]
    for name in names:
        if not _placeholder(name) and kinds[0] not in RUNTIME_KINDS:
            yield Reference(where, kinds[0], name=name)
    if selector and not _placeholder(selector):
        yield from _selector_references(where, kinds, selector)


def _placeholder(word: str) -> bool:
    return "<" in word or "..." in word or "$" in word


def doc_references(render: Render) -> list[Reference]:
    found: list[Reference] = []
    for doc in DOCS:
        where = str(doc.relative_to(ROOT))
        for command in commands(doc.read_text()):
            for domain in render.domains or ("",):
                found += references(_substitute(command, render, domain), where, render.namespace)
    return found


def _render(
    pulumi_mocks: Callable[..., RecordingMocks], stack: str, extra: Mapping[str, str]
) -> Render:
    config, secrets = stack_config(stack)
    config = {**config, **extra}
    if extra:
        secrets = [*secrets, "pgplatform:postgresAdminPassword"]
    mocks = run_program(pulumi_mocks, stack, config, secrets)
    objects = [{**r.inputs, "metadata": r.outputs.get("metadata", {})} for r in mocks.kubernetes()]
    namespace = str(objects[0]["metadata"]["namespace"])
    domains = sorted(
        {
            o["metadata"]["labels"]["app.kubernetes.io/instance"]
            for o in objects
            if o["kind"] == "Deployment"
            and o["metadata"]["labels"].get("app.kubernetes.io/name") == "postgrest"
        }
    )
    return Render(namespace=namespace, domains=tuple(domains), objects=objects)


@pytest.fixture
def renders(pulumi_mocks: Callable[..., RecordingMocks]) -> dict[str, Render]:
    return {
        "staging": _render(pulumi_mocks, "staging", {}),
        "prod": _render(pulumi_mocks, "prod", {}),
        "prod-external": _render(pulumi_mocks, "prod", EXTERNAL),
    }


def _resolves(render: Render, ref: Reference) -> bool:
    if ref.key in CREATED_BY_THE_PROCEDURE:
        return True
    if ref.name is not None:
        return render.named(ref.kind, ref.name)
    return render.selected(ref.kind, ref.selector or "")


def test_every_object_a_doc_names_in_kubectl_exists(renders: dict[str, Render]) -> None:
    problems = []
    checked = set()
    for label, render in renders.items():
        for ref in doc_references(render):
            needed_in = next(
                (stack for key, stack in CONDITIONAL.items() if re.fullmatch(key, ref.key)), None
            )
            if needed_in is None and label == "prod-external":
                continue  # the external-mode render only answers for its own objects
            if needed_in is not None and needed_in != label:
                continue
            checked.add(ref.key)
            if not _resolves(render, ref):
                problems.append(f"{ref.where}: {ref.key} is not in the {label} render")
    assert not problems, "\n".join(sorted(set(problems)))
    # The commands operators use most are among those checked (the parser found them).
    for key in (
        "Deployment/identity-api",
        "Deployment/pgbouncer",
        "Deployment/postgres-exporter",
        "Cluster/postgres-db",
        "CronJob/postgres-db-restore-check",
        "Pod/app.kubernetes.io/name=postgrest,app.kubernetes.io/instance=identity",
    ):
        assert key in checked, f"no doc command names {key}"


def test_a_generated_name_in_a_runbook_is_caught(renders: dict[str, Render]) -> None:
    prod = renders["prod"]
    [ref] = references(
        "kubectl -n pgplatform logs deploy/identity-api-deployment-d052eef6", "x", "pgplatform"
    )
    assert not _resolves(prod, ref)
    [ref] = references(
        "kubectl -n pgplatform get pods -l app.kubernetes.io/name=identity-api", "x", "pgplatform"
    )
    assert not _resolves(prod, ref)
    [ref] = references(
        "kubectl -n pgplatform get secret identity-postgrest-secrets", "x", "pgplatform"
    )
    assert _resolves(prod, ref)
    # An operator's object in its own namespace is the cluster's, not the stack's.
    assert not list(references("kubectl -n cnpg-system get deploy/barman-cloud", "x", "pgplatform"))


def test_docs_are_found() -> None:
    assert Path(ROOT / "docs" / "runbooks" / "ApiHighErrorRate.md") in DOCS
