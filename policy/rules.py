"""The platform's security model (DESIGN.md §2 and §4) as plain validation functions.

Resource rules take ``(resource_type, props, environment)`` and return violation messages; stack
rules take every resource of the stack as ``(resource_type, name, props)``. Only the standard
library is used, so the same code runs in the CrossGuard pack (``policy/__main__.py``), in the
unit tests over the offline render, and anywhere else without the Pulumi CLI.

Props are read as ``Mapping``/``Sequence``: the policy SDK hands proxies, not dicts and lists.
Kubernetes objects are registered from plain manifests (``components/k8s.py``), so their type
tokens are ``kubernetes:<group>/<version>:<Kind>`` and their props the camelCase manifest.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

Props = Mapping[str, Any]
StackResource = tuple[str, str, Props]
Environment = Literal["staging", "prod"]
ResourceCheck = Callable[[str, Props, Environment], list[str]]
StackCheck = Callable[[Sequence[StackResource], Environment], list[str]]

ENVIRONMENTS: Final = ("staging", "prod")
AUTHENTICATOR_ROLES: Final = frozenset({"postgrest", "postgraphile"})
ANONYMOUS_ROLE: Final = "api_anonymous"
API_ROLE_PREFIX: Final = "api_"
API_COMPONENTS: Final = frozenset({"api", "graphql"})
TLS_SSLMODES: Final = frozenset({"require", "verify-ca", "verify-full"})
VERIFYING_SSLMODES: Final = frozenset({"verify-ca", "verify-full"})
PGBOUNCER_SERVICE: Final = "pgbouncer"
PGBOUNCER_INI: Final = "pgbouncer.ini"
TOKEN_ANNOTATION: Final = "pgplatform.io/service-account-token"  # noqa: S105 - a name
"""Pod (template) annotation whose non-empty value says why the pod mounts its SA token."""
REDACTED: Final = "[secret]"
"""How the offline render writes a value Pulumi holds as secret."""

ROLE: Final = "postgresql:index/role:Role"
GRANT_ROLE: Final = "postgresql:index/grantRole:GrantRole"
GRANT: Final = "postgresql:index/grant:Grant"
DEFAULT_PRIVILEGES: Final = "postgresql:index/defaultPrivileges:DefaultPrivileges"
POSTGRESQL_PROVIDER: Final = "pulumi:providers:postgresql"

_LONG_RUNNING_KINDS: Final = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"}
)
_TEMPLATE_KINDS: Final = _LONG_RUNNING_KINDS | {"Job"}
_REPLICATED_KINDS: Final = frozenset({"Deployment", "StatefulSet"})


# --- environment -------------------------------------------------------------------------------


def stack_of_urn(urn: str) -> str:
    """``urn:pulumi:prod::pgplatform::type::name`` → ``prod`` (empty when not a URN)."""
    head = urn.split("::", 1)[0]
    parts = head.split(":", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "urn" else ""


def environment_of(stack: str, override: object = None) -> Environment:
    """The environment whose rules apply: the policy config wins, else the stack name.

    The program's own default is "environment = stack name"; here every stack not named
    ``staging`` gets the prod rules, so a new or oddly named stack fails closed.
    """
    if override is not None and override != "":
        if override == "staging":
            return "staging"
        if override == "prod":
            return "prod"
        raise ValueError(f"environment: {override!r} is not one of {list(ENVIRONMENTS)}")
    return "staging" if stack == "staging" else "prod"


# --- reading props ------------------------------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return []


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.lower() == "false")


def kind_of(resource_type: str) -> str | None:
    """``kubernetes:apps/v1:Deployment`` → ``Deployment``; None for anything else."""
    parts = resource_type.split(":")
    if len(parts) == 3 and parts[0] == "kubernetes" and "/" in parts[1]:
        return parts[2]
    return None


def _namespace(props: Props) -> str:
    return str(_map(props.get("metadata")).get("namespace") or "default")


def _object_name(props: Props) -> str | None:
    name = _map(props.get("metadata")).get("name")
    return str(name) if name else None


@dataclass(frozen=True)
class PodTemplate:
    """The pod part of a workload: its metadata, its spec, and whether it runs forever."""

    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    long_running: bool


def pod_template(resource_type: str, props: Props) -> PodTemplate | None:
    """The pod a workload object runs, or None when the object runs no pods."""
    kind = kind_of(resource_type)
    spec = _map(props.get("spec"))
    if kind in _TEMPLATE_KINDS:
        template = _map(spec.get("template"))
        return PodTemplate(
            _map(template.get("metadata")),
            _map(template.get("spec")),
            kind in _LONG_RUNNING_KINDS,
        )
    if kind == "CronJob":
        job = _map(_map(spec.get("jobTemplate")).get("spec"))
        template = _map(job.get("template"))
        return PodTemplate(_map(template.get("metadata")), _map(template.get("spec")), False)
    if kind == "Pod":
        restart = spec.get("restartPolicy") or "Always"
        return PodTemplate(_map(props.get("metadata")), spec, restart == "Always")
    return None


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    """(kind of container, container, long-running) for init and regular containers."""
    for container in _list(spec.get("initContainers")):
        # An init container with restartPolicy Always is a sidecar that runs as long as the pod.
        sidecar = _map(container).get("restartPolicy") == "Always"
        yield ("sidecar" if sidecar else "init container"), _map(container), sidecar
    for container in _list(spec.get("containers")):
        yield "container", _map(container), True


def _labels(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in _map(metadata.get("labels")).items()}


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = str(expression.get("key"))
    values = {str(v) for v in _list(expression.get("values"))}
    operator = expression.get("operator")
    value = labels.get(key)
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator in ("Exists", "DoesNotExist"):
        return (key in labels) == (operator == "Exists")
    return False  # an unknown operator selects nothing, as the API server would reject it


def selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; ``{}`` selects everything, None nothing."""
    if not isinstance(selector, Mapping):
        return False
    return all(
        labels.get(str(key)) == str(value)
        for key, value in _map(selector.get("matchLabels")).items()
    ) and all(
        _expression_matches(_map(expression), labels)
        for expression in _list(selector.get("matchExpressions"))
    )


# --- authenticator roles -----------------------------------------------------------------------


def _authenticator_problems(props: Props) -> list[str]:
    name = props.get("name")
    problems = []
    for field, attribute in (
        ("superuser", "SUPERUSER"),
        ("bypassRowLevelSecurity", "BYPASSRLS"),
        ("createRole", "CREATEROLE"),
        ("createDatabase", "CREATEDB"),
        ("replication", "REPLICATION"),
    ):
        if _is_true(props.get(field)):
            problems.append(f"authenticator role {name!r} must not be {attribute} ({field}: true)")
    if not _is_false(props.get("inherit")):
        # pulumi-postgresql creates roles with INHERIT unless told otherwise.
        problems.append(
            f"authenticator role {name!r} must be NOINHERIT: set inherit: false explicitly "
            "(the provider's default is INHERIT, which would give it every API role's rights)"
        )
    return problems


def check_authenticator_role(
    resource_type: str, props: Props, environment: Environment
) -> list[str]:
    """postgrest/postgraphile: LOGIN NOINHERIT, never SUPERUSER/BYPASSRLS/CREATEROLE/CREATEDB."""
    if resource_type != ROLE or props.get("name") not in AUTHENTICATOR_ROLES:
        return []
    return _authenticator_problems(props)


def check_authenticator_membership(
    resources: Sequence[StackResource], environment: Environment
) -> list[str]:
    """Any other LOGIN role granted an api_* role is an authenticator too: same constraints."""
    roles = {
        str(props.get("name")): (name, props)
        for resource_type, name, props in resources
        if resource_type == ROLE
    }
    members = sorted(
        {
            str(props.get("role"))
            for resource_type, _, props in resources
            if resource_type == GRANT_ROLE
            and str(props.get("grantRole", "")).startswith(API_ROLE_PREFIX)
        }
    )
    problems = []
    for member in members:
        if member in AUTHENTICATOR_ROLES or member not in roles:
            continue
        name, props = roles[member]
        if _is_true(props.get("login")):
            problems += [
                f"{name}: {problem} (it is granted API roles)"
                for problem in _authenticator_problems(props)
            ]
    return problems


# --- anonymous access --------------------------------------------------------------------------

_ANON_SETTING = re.compile(r"^\s*db-anon-role\s*=\s*\S", re.MULTILINE)


def check_no_anonymous_in_prod(
    resource_type: str, props: Props, environment: Environment
) -> list[str]:
    """Prod has no anonymous role: not created, granted, given privileges, nor configured."""
    if environment != "prod":
        return []
    if resource_type == ROLE and props.get("name") == ANONYMOUS_ROLE:
        return [f"role {ANONYMOUS_ROLE} must not exist in prod (anonymous access is off)"]
    if resource_type == GRANT_ROLE and ANONYMOUS_ROLE in (
        props.get("role"),
        props.get("grantRole"),
    ):
        return [
            f"{props.get('grantRole')} granted to {props.get('role')}: "
            f"{ANONYMOUS_ROLE} is not granted in prod"
        ]
    if resource_type in (GRANT, DEFAULT_PRIVILEGES) and props.get("role") == ANONYMOUS_ROLE:
        return [f"privileges for {ANONYMOUS_ROLE} must not be granted in prod"]
    return _anonymous_setting(resource_type, props)


def _anonymous_setting(resource_type: str, props: Props) -> list[str]:
    """PostgREST's anonymous role set in its config file or its environment."""
    if kind_of(resource_type) == "ConfigMap":
        return [
            f"ConfigMap key {key!r} sets db-anon-role: requests without a JWT are rejected in prod"
            for key, value in _map(props.get("data")).items()
            if isinstance(value, str) and _ANON_SETTING.search(value)
        ]
    template = pod_template(resource_type, props)
    return [
        f"{label} {container.get('name')!r} sets PGRST_DB_ANON_ROLE: no anonymous role in prod"
        for label, container, _ in (_containers(template.spec) if template else ())
        for item in _list(container.get("env"))
        if _map(item).get("name") == "PGRST_DB_ANON_ROLE"
        and (_map(item).get("value") or _map(item).get("valueFrom"))
    ]


# --- pod hardening ------------------------------------------------------------------------------


def _effective(container_sc: Mapping[str, Any], pod_sc: Mapping[str, Any], field: str) -> Any:
    return container_sc[field] if field in container_sc else pod_sc.get(field)


def _container_hardening(
    label: str, container: Mapping[str, Any], pod_sc: Mapping[str, Any]
) -> list[str]:
    sc = _map(container.get("securityContext"))
    where = f"{label} {container.get('name')!r}"
    problems = []
    if not _is_true(_effective(sc, pod_sc, "runAsNonRoot")):
        problems.append(f"{where}: runAsNonRoot must be true (container or pod securityContext)")
    if str(_effective(sc, pod_sc, "runAsUser")) in {"0", "0.0"}:  # the wire sends floats
        problems.append(f"{where}: runAsUser 0 is root")
    if not _is_true(sc.get("readOnlyRootFilesystem")):
        problems.append(f"{where}: readOnlyRootFilesystem must be true")
    if not _is_false(sc.get("allowPrivilegeEscalation")):
        problems.append(f"{where}: allowPrivilegeEscalation must be false")
    if _is_true(sc.get("privileged")):
        problems.append(f"{where}: privileged containers are not allowed")
    capabilities = _map(sc.get("capabilities"))
    if "ALL" not in {str(c).upper() for c in _list(capabilities.get("drop"))}:
        problems.append(f"{where}: capabilities.drop must contain ALL")
    added = {str(c).upper() for c in _list(capabilities.get("add"))} - {"NET_BIND_SERVICE"}
    if added:
        problems.append(f"{where}: capabilities.add {sorted(added)} is not allowed")
    seccomp = _map(sc.get("seccompProfile")) or _map(pod_sc.get("seccompProfile"))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile.type must be RuntimeDefault")
    resources = _map(container.get("resources"))
    for part in ("requests", "limits"):
        values = _map(resources.get(part))
        missing = [r for r in ("cpu", "memory") if not values.get(r)]
        if missing:
            problems.append(f"{where}: resources.{part} needs {' and '.join(missing)}")
    return problems


def check_pod_hardened(resource_type: str, props: Props, environment: Environment) -> list[str]:
    """Every pod: non-root, read-only root, no capabilities, seccomp, no token, sized, probed."""
    template = pod_template(resource_type, props)
    if template is None:
        return []
    spec = template.spec
    pod_sc = _map(spec.get("securityContext"))
    problems = []
    if not _is_false(spec.get("automountServiceAccountToken")):
        reason = str(_map(template.metadata.get("annotations")).get(TOKEN_ANNOTATION, "")).strip()
        if not reason:
            problems.append(
                "automountServiceAccountToken must be false, or the pod template must say why "
                f"it needs the token in the annotation {TOKEN_ANNOTATION}"
            )
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if _is_true(spec.get(field)):
            problems.append(f"{field} is not allowed")
    containers = list(_containers(spec))
    if not any(label == "container" for label, _, _ in containers):
        problems.append("the pod spec has no containers")
    for label, container, runs_forever in containers:
        problems += _container_hardening(label, container, pod_sc)
        if template.long_running and runs_forever:
            for probe in ("livenessProbe", "readinessProbe"):
                if not _map(container.get(probe)):
                    problems.append(
                        f"{label} {container.get('name')!r}: a long-running container needs a "
                        f"{probe}"
                    )
    return problems


# --- images -------------------------------------------------------------------------------------

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_problem(image: Any) -> str | None:
    """Why ``image`` is not pinned, or None: a digest, or a tag other than ``latest``."""
    if not isinstance(image, str) or not image.strip():
        return "has no image"
    if "@" in image:
        digest = image.split("@", 1)[1]
        return None if _DIGEST.match(digest) else f"{image!r} has a malformed digest"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or not last.split(":", 1)[1]:
        return f"{image!r} has no tag: pin a version (or a digest)"
    if last.split(":", 1)[1] == "latest":
        return f"{image!r} uses 'latest': pin a version (or a digest)"
    return None


def check_images_pinned(resource_type: str, props: Props, environment: Environment) -> list[str]:
    """Images by version or digest, never ``latest`` or untagged (pods and CNPG clusters)."""
    problems = []
    template = pod_template(resource_type, props)
    if template is not None:
        for label, container, _ in _containers(template.spec):
            problem = image_problem(container.get("image"))
            if problem:
                problems.append(f"{label} {container.get('name')!r}: image {problem}")
    if kind_of(resource_type) == "Cluster" and resource_type.startswith(
        "kubernetes:postgresql.cnpg.io/"
    ):
        spec = _map(props.get("spec"))
        # Without imageName the operator's own pinned default is used.
        if "imageName" in spec:
            problem = image_problem(spec.get("imageName"))
            if problem:
                problems.append(f"spec.imageName {problem}")
    return problems


# --- plaintext secrets --------------------------------------------------------------------------

_SENSITIVE_WORDS: Final = frozenset(
    {"password", "passwd", "secret", "token", "apikey", "credential", "credentials"}
)
_KEY_QUALIFIERS: Final = frozenset({"private", "api", "access", "secret", "signing"})
_KEY_TOKENS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_PRIVATE_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_URI_CREDENTIALS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://([^/\s:@\"']+):([^/\s@\"']+)@")
_PASSWORD_HASH = re.compile(r"SCRAM-SHA-256\$\d+:|\bmd5[0-9a-f]{32}\b")
_REFERENCE = re.compile(r"^(?:\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\{[^}]+\}|\$[A-Za-z_]\w*|[@/]\S*)$")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)[\"']?\s*[:=]\s*(.*)$")
_QUOTED_VALUE = re.compile(r"^([\"'])(.*?)\1\s*[,;]?\s*(?:[#;].*)?$")
_BARE_VALUE = re.compile(r"^([^\s\"'()\[\]{}<>,;=]+)\s*[,;]?\s*(?:[#;].*)?$")
_DOTTED_NAME = re.compile(r"^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+$")
_NOT_A_VALUE: Final = frozenset({"true", "false", "null", "none", "nil", "undefined", "~"})


def sensitive_key(key: str) -> bool:
    """Key names that hold a credential: the last word is password/secret/token/private key…

    The last word decides, so ``jwt-secret-is-base64``, ``secretName`` or ``token_file`` (a flag,
    a reference, a path) are not credentials while ``PGPASSWORD`` and ``tls.privateKey`` are;
    a word merely ending in one (``jsonwebtoken``) is not, except run-together ``…password``.
    """
    words = [w.lower() for w in _KEY_TOKENS.findall(key)]
    if not words:
        return False
    last = words[-1]
    if last in _SENSITIVE_WORDS or last.endswith(("password", "passwd")):
        return True
    return len(words) >= 2 and last == "key" and words[-2] in _KEY_QUALIFIERS


def assigned_literal(raw: str) -> str | None:
    """The literal a config line assigns, or None when it assigns code, a flag or nothing.

    ``"abc"`` and ``abc`` are literals; ``process.env.X``, ``f(x)``, ``== ''`` (a comparison),
    ``true`` or an empty value are not, so code in a mounted script is not taken for config.
    """
    text = raw.strip()
    if not text or text.startswith("="):
        return None
    quoted = _QUOTED_VALUE.match(text)
    if quoted:
        return quoted.group(2) or None
    bare = _BARE_VALUE.match(text)
    if bare is None:
        return None
    value = bare.group(1)
    if value.lower() in _NOT_A_VALUE or _DOTTED_NAME.match(value):
        return None
    return value


def _is_reference(value: str) -> bool:
    """``$(VAR)``, ``${VAR}``, ``@/file`` or ``/path``: a pointer to the secret, not the secret."""
    return bool(_REFERENCE.match(value))


def _uri_credential_leak(text: str) -> bool:
    for match in _URI_CREDENTIALS.finditer(text):
        password = unquote(match.group(2))
        if password and not _is_reference(password):
            return True
    return False


def secret_text_problems(text: str) -> list[str]:
    """Credentials in free text, whatever the key: private keys, URI passwords, hashes."""
    problems = []
    if _PRIVATE_PEM.search(text):
        problems.append("contains a PEM private key")
    if _uri_credential_leak(text):
        problems.append("contains a URI with user:password@")
    if _PASSWORD_HASH.search(text):
        problems.append("contains a password verifier (SCRAM or md5)")
    if REDACTED in text:
        problems.append("contains a value Pulumi holds as a secret")
    return problems


def _config_text_problems(text: str) -> list[str]:
    problems = secret_text_problems(text)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or stripped.startswith("//"):
            continue
        match = _ASSIGNMENT.search(stripped)
        if match is None or not sensitive_key(match.group(1)):
            continue
        value = assigned_literal(match.group(2))
        if value is not None and not _is_reference(value):
            problems.append(f"line {number} sets {match.group(1)!r} to a literal value")
    return problems


def _decoded(value: Any) -> str:
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


def _env_problems(label: str, container: Mapping[str, Any]) -> list[str]:
    where = f"{label} {container.get('name')!r}"
    problems = []
    for item in _list(container.get("env")):
        env = _map(item)
        value = env.get("value")
        if not isinstance(value, str) or not value:
            continue
        name = str(env.get("name"))
        if sensitive_key(name) and not _is_reference(value):
            problems.append(f"{where}: env {name} is a literal; use valueFrom.secretKeyRef")
        problems += [f"{where}: env {name} {p}" for p in secret_text_problems(value)]
    for field in ("command", "args"):
        for arg in _list(container.get(field)):
            problems += [f"{where}: {field} {p}" for p in secret_text_problems(str(arg))]
    return problems


def check_no_plaintext_secrets(
    resource_type: str, props: Props, environment: Environment
) -> list[str]:
    """No credential in a ConfigMap or in a container's env literals, command or args."""
    problems = []
    if kind_of(resource_type) == "ConfigMap":
        for field, decode in (("data", False), ("binaryData", True)):
            for key, value in _map(props.get(field)).items():
                text = _decoded(value) if decode else str(value)
                if sensitive_key(str(key)) and text.strip() and not _is_reference(text.strip()):
                    problems.append(f"ConfigMap {field} key {key!r} holds a credential")
                problems += [
                    f"ConfigMap {field} key {key!r} {p}" for p in _config_text_problems(text)
                ]
    template = pod_template(resource_type, props)
    if template is not None:
        for label, container, _ in _containers(template.spec):
            problems += _env_problems(label, container)
    return problems


# --- database TLS -------------------------------------------------------------------------------

_POSTGRES_URI = re.compile(r"\bpostgres(?:ql)?://[^\s\"'<>`]+")


@dataclass(frozen=True)
class DatabaseUri:
    """A ``postgres://`` URI found in config, without its credentials."""

    where: str
    display: str
    hosts: tuple[str, ...]
    sslmode: str | None

    @property
    def tls(self) -> bool:
        return self.sslmode in TLS_SSLMODES

    @property
    def local_socket(self) -> bool:
        return all(not h or h.startswith("/") for h in self.hosts)

    @property
    def to_pgbouncer(self) -> bool:
        return bool(self.hosts) and all(is_pgbouncer_host(h) for h in self.hosts)


def is_pgbouncer_host(host: str) -> bool:
    """The in-cluster PgBouncer Service: ``pgbouncer``, ``pgbouncer.<ns>``, ``…svc[.<domain>]``."""
    labels = host.lower().split(".")
    if labels[0] != PGBOUNCER_SERVICE:
        return False
    return len(labels) <= 2 or labels[2] == "svc"


def parse_database_uris(text: str, where: str) -> list[DatabaseUri]:
    """Every ``postgres(ql)://`` URI in ``text`` with its hosts and sslmode."""
    found = []
    for match in _POSTGRES_URI.finditer(text):
        raw = match.group(0).rstrip(".,;)")
        parts = urlsplit(raw)
        query = parse_qs(parts.query)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        hosts = [
            unquote(h if h.startswith("[") else h.rsplit(":", 1)[0]) for h in netloc.split(",")
        ]
        hosts += [unquote(h) for h in query.get("host", [])]
        sslmode = query.get("sslmode", [None])[-1]
        display = f"{parts.scheme}://{netloc}{parts.path}"
        found.append(DatabaseUri(where, display, tuple(h for h in hosts if h), sslmode))
    return found


def database_uris(resource_type: str, props: Props) -> list[DatabaseUri]:
    """Connections in a ConfigMap's data or in container env literals, commands and args."""
    uris = []
    if kind_of(resource_type) == "ConfigMap":
        for key, value in _map(props.get("data")).items():
            uris += parse_database_uris(str(value), f"ConfigMap key {key!r}")
    template = pod_template(resource_type, props)
    if template is not None:
        for label, container, _ in _containers(template.spec):
            where = f"{label} {container.get('name')!r}"
            literals = {
                str(_map(item).get("name")): _map(item)["value"]
                for item in _list(container.get("env"))
                if isinstance(_map(item).get("value"), str)
            }
            for name, value in literals.items():
                uris += parse_database_uris(value, f"{where} env {name}")
            if "PGHOST" in literals:
                # libpq's environment form: PGHOST (comma-separated) + PGSSLMODE.
                hosts = tuple(h for h in literals["PGHOST"].split(",") if h)
                display = f"PGHOST={literals['PGHOST']}"
                uris.append(DatabaseUri(f"{where} env", display, hosts, literals.get("PGSSLMODE")))
            for field in ("command", "args"):
                for arg in _list(container.get(field)):
                    uris += parse_database_uris(str(arg), f"{where} {field}")
    return uris


def check_database_tls(resource_type: str, props: Props, environment: Environment) -> list[str]:
    """Database connections use TLS; the in-cluster PgBouncer hop is the one documented exception.

    A URI whose every host is the PgBouncer Service may go without TLS: PgBouncer terminates the
    client side inside the namespace and speaks TLS to PostgreSQL. ``check_pgbouncer_tls_boundary``
    proves that boundary holds (server TLS, SCRAM, a NetworkPolicy) whenever such a URI exists.
    """
    problems = [
        f"{uri.where}: {uri.display} has sslmode={uri.sslmode or '(unset)'}; "
        f"use one of {sorted(TLS_SSLMODES)}"
        for uri in database_uris(resource_type, props)
        if not (uri.tls or uri.local_socket or uri.to_pgbouncer)
    ]
    if resource_type == POSTGRESQL_PROVIDER and environment == "prod":
        sslmode = props.get("sslmode")
        if sslmode not in TLS_SSLMODES:
            problems.append(
                f"postgresql provider sslmode={sslmode or '(unset)'} in prod: the admin "
                f"connection must use one of {sorted(TLS_SSLMODES)}"
            )
    return problems


def _ini_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;[" or "=" not in stripped:
            continue
        key, value = stripped.split("=", 1)
        settings[key.strip()] = value.strip()
    return settings


def _ingress_restricted(policy: Props) -> bool:
    spec = _map(policy.get("spec"))
    types = [str(t) for t in _list(spec.get("policyTypes"))] or ["Ingress"]
    if "Ingress" not in types:
        return False
    return all(_list(_map(rule).get("from")) for rule in _list(spec.get("ingress")))


def check_pgbouncer_tls_boundary(
    resources: Sequence[StackResource], environment: Environment
) -> list[str]:
    """Plaintext to PgBouncer only behind a proven boundary (server TLS, SCRAM, NetworkPolicy)."""
    plaintext = [
        f"{name}: {uri.display}"
        for resource_type, name, props in resources
        for uri in database_uris(resource_type, props)
        if uri.to_pgbouncer and not uri.tls
    ]
    if not plaintext:
        return []
    clients = ", ".join(sorted(plaintext))
    problems = []
    inis = [
        (name, _ini_settings(str(_map(props.get("data"))[PGBOUNCER_INI])))
        for resource_type, name, props in resources
        if kind_of(resource_type) == "ConfigMap" and PGBOUNCER_INI in _map(props.get("data"))
    ]
    if not inis:
        problems.append(f"no {PGBOUNCER_INI} ConfigMap in the stack for the clients {clients}")
    required = VERIFYING_SSLMODES if environment == "prod" else TLS_SSLMODES
    for name, ini in inis:
        if ini.get("server_tls_sslmode") not in required:
            problems.append(
                f"{name}: server_tls_sslmode={ini.get('server_tls_sslmode') or '(unset)'}; "
                f"PgBouncer must reach PostgreSQL with one of {sorted(required)}"
            )
        if ini.get("auth_type") != "scram-sha-256":
            problems.append(
                f"{name}: auth_type={ini.get('auth_type') or '(unset)'}; the plaintext client hop "
                "needs scram-sha-256 so no password crosses it"
            )
    pools = [
        (name, props, _labels(template.metadata))
        for _, name, props, template in _workloads(resources, _REPLICATED_KINDS)
        if _labels(template.metadata).get("app.kubernetes.io/name") == PGBOUNCER_SERVICE
    ]
    if not pools:
        problems.append(f"no PgBouncer workload in the stack for the clients {clients}")
    for name, props, labels in pools:
        guarded = any(
            kind_of(t) == "NetworkPolicy"
            and _namespace(p) == _namespace(props)
            and selector_matches(_map(p.get("spec")).get("podSelector"), labels)
            and _ingress_restricted(p)
            for t, _, p in resources
        )
        if not guarded:
            problems.append(
                f"{name}: no NetworkPolicy restricts ingress to the PgBouncer pods, so the "
                "plaintext client hop is open to the whole cluster"
            )
    return problems


# --- availability and isolation -----------------------------------------------------------------


def _hpa_min_by_target(resources: Sequence[StackResource]) -> dict[tuple[str, str, str], int]:
    targets: dict[tuple[str, str, str], int] = {}
    for resource_type, _, props in resources:
        if kind_of(resource_type) != "HorizontalPodAutoscaler":
            continue
        spec = _map(props.get("spec"))
        ref = _map(spec.get("scaleTargetRef"))
        key = (_namespace(props), str(ref.get("kind")), str(ref.get("name")))
        minimum = int(spec.get("minReplicas") or 1)
        targets[key] = max(targets.get(key, 0), minimum)
    return targets


def _workloads(
    resources: Sequence[StackResource], kinds: Iterable[str]
) -> Iterator[tuple[str, str, Props, PodTemplate]]:
    wanted = set(kinds)
    for resource_type, name, props in resources:
        kind = kind_of(resource_type)
        template = pod_template(resource_type, props)
        if kind in wanted and template is not None:
            yield kind, name, props, template


def _selecting(
    resources: Sequence[StackResource], kind: str, namespace: str, labels: Mapping[str, str]
) -> list[Props]:
    field = "podSelector" if kind == "NetworkPolicy" else "selector"
    return [
        props
        for resource_type, _, props in resources
        if kind_of(resource_type) == kind
        and _namespace(props) == namespace
        and selector_matches(_map(props.get("spec")).get(field), labels)
    ]


def check_pdb_for_replicas(
    resources: Sequence[StackResource], environment: Environment
) -> list[str]:
    """A workload that runs ≥ 2 replicas (or an HPA minimum ≥ 2) has a PDB selecting its pods."""
    hpa_min = _hpa_min_by_target(resources)
    problems = []
    for kind, name, props, template in _workloads(resources, _REPLICATED_KINDS):
        namespace = _namespace(props)
        replicas = int(_map(props.get("spec")).get("replicas") or 1)
        autoscaled = hpa_min.get((namespace, kind, _object_name(props) or ""), 0)
        if max(replicas, autoscaled) < 2:
            continue
        if not _selecting(resources, "PodDisruptionBudget", namespace, _labels(template.metadata)):
            problems.append(
                f"{kind} {name} runs {max(replicas, autoscaled)} replicas but no "
                "PodDisruptionBudget selects its pods"
            )
    return problems


def check_api_autoscaled_and_isolated(
    resources: Sequence[StackResource], environment: Environment
) -> list[str]:
    """Every API Deployment (component api or graphql) has an HPA and an ingress NetworkPolicy."""
    hpa_min = _hpa_min_by_target(resources)
    problems = []
    for kind, name, props, template in _workloads(resources, {"Deployment"}):
        labels = _labels(template.metadata)
        component = _labels(_map(props.get("metadata"))).get(
            "app.kubernetes.io/component", labels.get("app.kubernetes.io/component")
        )
        if component not in API_COMPONENTS:
            continue
        namespace = _namespace(props)
        if (namespace, kind, _object_name(props) or "") not in hpa_min:
            problems.append(f"{kind} {name} (component {component}) has no HorizontalPodAutoscaler")
        policies = _selecting(resources, "NetworkPolicy", namespace, labels)
        if not any(_ingress_restricted(p) for p in policies):
            problems.append(
                f"{kind} {name} (component {component}) has no NetworkPolicy restricting ingress"
            )
    return problems


# --- alerts -------------------------------------------------------------------------------------


def check_alert_runbooks(resource_type: str, props: Props, environment: Environment) -> list[str]:
    """Every PrometheusRule alert links its runbook (annotations.runbook_url, an http(s) URL)."""
    if kind_of(resource_type) != "PrometheusRule":
        return []
    problems = []
    for group in _list(_map(props.get("spec")).get("groups")):
        for rule in _list(_map(group).get("rules")):
            body = _map(rule)
            if "alert" not in body:
                continue
            url = _map(body.get("annotations")).get("runbook_url")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                problems.append(
                    f"alert {body.get('alert')!r} (group {_map(group).get('name')!r}) needs "
                    "annotations.runbook_url with an http(s) URL"
                )
    return problems


# --- the pack's table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One policy of the pack: its name, what it enforces, and the function that checks it."""

    name: str
    description: str
    check: ResourceCheck | None = None
    stack_check: StackCheck | None = None


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "authenticator-role-hardened",
        "The postgrest/postgraphile roles are NOINHERIT and never SUPERUSER, BYPASSRLS, "
        "CREATEROLE, CREATEDB or REPLICATION.",
        check=check_authenticator_role,
    ),
    Rule(
        "authenticator-membership-hardened",
        "Any other LOGIN role granted an api_* role has the authenticator's constraints.",
        stack_check=check_authenticator_membership,
    ),
    Rule(
        "no-anonymous-role-in-prod",
        "Prod has no api_anonymous role, no grant of it, no privileges for it, no db-anon-role.",
        check=check_no_anonymous_in_prod,
    ),
    Rule(
        "pod-hardened",
        "Pods run non-root with a read-only root filesystem, all capabilities dropped, seccomp "
        "RuntimeDefault, no service-account token, requests and limits, and probes.",
        check=check_pod_hardened,
    ),
    Rule(
        "image-pinned",
        "Container images carry a version tag or a digest, never latest or no tag.",
        check=check_images_pinned,
    ),
    Rule(
        "no-plaintext-secrets",
        "No credential in ConfigMaps or in container env literals, commands or args.",
        check=check_no_plaintext_secrets,
    ),
    Rule(
        "database-tls",
        "postgres:// URIs use sslmode require/verify-ca/verify-full (except the in-cluster "
        "PgBouncer hop); the prod postgresql provider connects with TLS.",
        check=check_database_tls,
    ),
    Rule(
        "pgbouncer-tls-boundary",
        "Plaintext connections to PgBouncer only when PgBouncer speaks TLS to PostgreSQL, "
        "authenticates with SCRAM and a NetworkPolicy restricts who reaches it.",
        stack_check=check_pgbouncer_tls_boundary,
    ),
    Rule(
        "pdb-for-replicated-workloads",
        "A Deployment or StatefulSet with 2 or more replicas (or an HPA minimum of 2 or more) "
        "has a PodDisruptionBudget selecting its pods.",
        stack_check=check_pdb_for_replicas,
    ),
    Rule(
        "api-autoscaled-and-isolated",
        "Every API Deployment (component api or graphql) has a HorizontalPodAutoscaler and a "
        "NetworkPolicy restricting ingress.",
        stack_check=check_api_autoscaled_and_isolated,
    ),
    Rule(
        "alert-runbook",
        "Every PrometheusRule alert has annotations.runbook_url.",
        check=check_alert_runbooks,
    ),
)


def validate_resource(resource_type: str, props: Props, environment: Environment) -> list[str]:
    """Every resource rule on one resource, each message prefixed with its policy name."""
    return [
        f"[{rule.name}] {message}"
        for rule in RULES
        if rule.check is not None
        for message in rule.check(resource_type, props, environment)
    ]


def validate_stack(resources: Sequence[StackResource], environment: Environment) -> list[str]:
    """Every rule over a whole stack: the resource rules per resource, then the stack rules."""
    problems = [
        f"{name}: {message}"
        for resource_type, name, props in resources
        for message in validate_resource(resource_type, props, environment)
    ]
    return problems + [
        f"[{rule.name}] {message}"
        for rule in RULES
        if rule.stack_check is not None
        for message in rule.stack_check(resources, environment)
    ]
