"""Stack settings: the committed stacks parse, and every bad input names its key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.settings import SettingsError, parse_settings

pytestmark = pytest.mark.unit

_STAGING: dict[str, Any] = {
    "publicBaseUrl": "https://api.staging.example.com",
    "auth": {"audience": "pgplatform-staging"},
    "domains": {
        "identity": {},
        "content": {"replicas": {"min": 1, "max": 4}},
        "analytics": {"readFromReplicas": True},
    },
    "services": [{"name": "cms", "schemas": ["content"], "access": "write"}],
}
_PROD: dict[str, Any] = {
    "publicBaseUrl": "https://api.example.com",
    "auth": {"audience": "pgplatform", "jwksUrl": "https://id.example.com/jwks.json"},
    "domains": {"identity": {}, "content": {}, "analytics": {"readFromReplicas": True}},
    "backup": {"destinationPath": "s3://backups/pg", "credentialsSecret": "backup-s3"},
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``base`` with the dotted ``path`` set to ``value`` (a fresh copy)."""
    raw = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


def _problems(stack: str, raw: dict[str, Any], secrets: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(stack, raw, secrets)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(("stack", "raw"), [("staging", _STAGING), ("prod", _PROD)])
def test_base_configs_are_valid(stack: str, raw: dict[str, Any]) -> None:
    """The bases of the error cases below are valid, so each case fails for its own reason."""
    settings = parse_settings(stack, raw)
    assert settings.environment == stack
    assert set(settings.domains) >= {"identity", "content", "analytics"}


def test_environment_defaults_apply() -> None:
    staging = parse_settings("staging", _STAGING)
    prod = parse_settings("prod", _PROD)
    assert (staging.postgres.instances, prod.postgres.instances) == (2, 3)
    assert staging.auth.anonymous is True
    assert prod.auth.anonymous is False
    assert prod.domains["identity"].replicas.min >= 2
    assert staging.schema_of("analytics") == "analytics"
    # A domain override replaces only what it names.
    assert staging.domains["content"].replicas.max == 4
    assert staging.domains["content"].max_rows == staging.domains["identity"].max_rows


@pytest.mark.parametrize(
    ("stack", "path", "value", "key", "hint"),
    [
        (
            "staging",
            "domains.identity.replicas",
            {"min": 5, "max": 2},
            "domains.identity.replicas",
            "min (5) must be <= max (2)",
        ),
        ("prod", "auth.anonymous", True, "auth.anonymous", "must not allow anonymous"),
        ("prod", "auth.mode", "hs256", "auth.mode", "use 'jwks'"),
        ("staging", "auth.mode", "basic", "auth.mode", "'hs256' or 'jwks'"),
        ("staging", "domains.identity.maxRows", 0, "domains.identity.maxRows", "greater than"),
        ("staging", "domains.identity.replicaz", 2, "domains.identity.replicaz", "unknown key"),
        ("staging", "postgress", {}, "postgress", "unknown key"),
        ("staging", "postgres.mode", "rds", "postgres.mode", "'cnpg' or 'external'"),
        ("staging", "postgres.mode", "external", "postgres", "needs both 'host'"),
        (
            "staging",
            "postgres.instances",
            1,
            "domains.analytics.readFromReplicas",
            "no read replica",
        ),
        ("prod", "postgres.sslmode", "require", "postgres.sslmode", "verify-full"),
        (
            "prod",
            "domains.identity.replicas",
            {"min": 1, "max": 2},
            "domains.identity.replicas.min",
            "at least 2",
        ),
        (
            "staging",
            "domains.identity.resources.limits.cpu",
            "lots",
            "domains.identity.resources.limits.cpu",
            "Kubernetes quantity",
        ),
        (
            "staging",
            "roles.statementTimeout.user",
            "5 seconds",
            "roles.statementTimeout.user",
            "not a duration",
        ),
        ("staging", "publicBaseUrl", "http://insecure.example.com", "publicBaseUrl", "https"),
    ],
)
def test_bad_value_names_its_key(stack: str, path: str, value: Any, key: str, hint: str) -> None:
    base = _STAGING if stack == "staging" else _PROD
    problems = _problems(stack, _with(base, path, value))
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in problems), problems


@pytest.mark.parametrize(
    "name",
    [
        "public",
        "audit",
        "platform",
        "pg_catalog",
        "information_schema",
        "postgrest",
        "api_user",
        "select",
        "Identity",
        "has-dash",
        "1st",
    ],
)
def test_reserved_or_invalid_domain_names(name: str) -> None:
    raw = copy.deepcopy(_STAGING)
    raw["domains"][name] = {}
    problems = _problems("staging", raw)
    assert any(p.startswith(f"pgplatform:domains.{name}:") for p in problems), problems


@pytest.mark.parametrize("name", ["public", "postgres", "Bad", "pg_x"])
def test_reserved_or_invalid_service_names(name: str) -> None:
    problems = _problems("staging", _with(_STAGING, "services", [{"name": name}]))
    assert any(p.startswith("pgplatform:services[0].name") for p in problems), problems


def test_service_must_name_known_domains() -> None:
    raw = _with(_STAGING, "services", [{"name": "cms", "schemas": ["billing"]}])
    assert any("services[0].schemas" in p and "billing" in p for p in _problems("staging", raw))


def test_duplicate_services_and_schemas() -> None:
    raw = _with(_STAGING, "services", [{"name": "cms"}, {"name": "cms"}])
    raw["domains"]["content"]["schema"] = "identity"
    problems = _problems("staging", raw)
    assert any(p.startswith("pgplatform:services[1].name") for p in problems)
    assert any(p.startswith("pgplatform:domains.content.schema") for p in problems)


def test_jwks_mode_needs_url() -> None:
    raw = copy.deepcopy(_PROD)
    del raw["auth"]["jwksUrl"]
    assert any(p.startswith("pgplatform:auth.jwksUrl") for p in _problems("prod", raw))


def test_unknown_environment_lists_allowed() -> None:
    problems = _problems("dev", _STAGING)
    assert problems == [
        "pgplatform:environment: unknown environment; allowed: ['staging', 'prod'] "
        "(defaults to the stack name) (got 'dev')"
    ]


def test_external_mode_needs_admin_secret_and_ca() -> None:
    raw = _with(
        _PROD,
        "postgres",
        {"mode": "external", "host": "db.example.com", "roHost": "db-ro.example.com"},
    )
    problems = _problems("prod", raw)
    assert any(p.startswith("pgplatform:postgresAdminPassword") for p in problems)
    assert any(p.startswith("pgplatform:postgres.caSecret") for p in problems)


def test_secret_key_given_in_plain_text_is_refused() -> None:
    raw = _with(_STAGING, "postgresAdminPassword", "hunter2")
    problems = _problems("staging", raw)
    assert any("--secret pgplatform:postgresAdminPassword" in p for p in problems)
    assert not any("hunter2" in p for p in problems)
    # Given as a secret it is accepted and kept out of reprs.
    settings = parse_settings("staging", raw, ("postgresAdminPassword",))
    assert "hunter2" not in repr(settings)


def test_all_problems_reported_together() -> None:
    raw = _with(_STAGING, "domains.identity.replicas", {"min": 3, "max": 1})
    raw["domains"]["content"]["maxRowz"] = 1
    raw["domains"]["public"] = {}
    problems = _problems("staging", raw)
    assert len(problems) == 3, problems


def test_error_message_is_one_readable_block() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings("prod", _with(_PROD, "auth.anonymous", True))
    text = str(caught.value)
    assert text.startswith("invalid stack configuration (1 problems):")
    assert "Traceback" not in text


def test_group_roles_map_to_api_roles_of_the_stack() -> None:
    groups = {
        "editors": {"role": "api_editor", "priority": 20},
        "cms": {"role": "api_service_cms", "priority": 5},
    }
    raw = _with(_with(_STAGING, "auth.groupRoles", groups), "auth.baseRole", "api_anonymous")
    settings = parse_settings("staging", raw)
    assert settings.auth.base_role == "api_anonymous"
    assert settings.auth.group_roles["cms"].role == "api_service_cms"
    prod = _with(
        _with(_PROD, "auth.groupRoles", {"editors": groups["editors"]}), "auth.baseRole", "api_user"
    )
    assert parse_settings("prod", prod).auth.base_role == "api_user"


@pytest.mark.parametrize(
    ("stack", "auth", "key", "hint"),
    [
        (
            "staging",
            {"groupRoles": {"g": {"role": "api_user", "priority": 1}}},
            "auth.baseRole",
            "required",
        ),
        ("prod", {"baseRole": "api_anonymous"}, "auth.baseRole", "must be one of"),
        ("staging", {"baseRole": "postgres"}, "auth.baseRole", "must be one of"),
        (
            "staging",
            {
                "baseRole": "api_user",
                "groupRoles": {"g": {"role": "pgplatform_owner", "priority": 1}},
            },
            "auth.groupRoles.g.role",
            "must be one of",
        ),
        (
            "staging",
            {"baseRole": "api_user", "groupRoles": {"g": {"role": "api_anonymous", "priority": 1}}},
            "auth.groupRoles.g.role",
            "must be one of",
        ),
        (
            "staging",
            {
                "baseRole": "api_user",
                "groupRoles": {"g": {"role": "api_service_nope", "priority": 1}},
            },
            "auth.groupRoles.g.role",
            "api_service_cms",
        ),
        (
            "staging",
            {"baseRole": "api_user", "groupRoles": {"g": {"role": "api_user"}}},
            "auth.groupRoles.g.priority",
            "",
        ),
    ],
)
def test_group_role_errors_name_their_key(
    stack: str, auth: dict[str, Any], key: str, hint: str
) -> None:
    raw = copy.deepcopy(_STAGING if stack == "staging" else _PROD)
    raw["auth"].update(auth)
    problems = _problems(stack, raw)
    assert any(p.startswith(f"pgplatform:{key}") and hint in p for p in problems), problems


def test_cache_control_per_role() -> None:
    cache = {"api_anonymous": "public, max-age=60", "api_user": "private, max-age=30"}
    settings = parse_settings("staging", _with(_STAGING, "domains.content.cacheControl", cache))
    assert settings.domains["content"].cache_control == cache


@pytest.mark.parametrize(
    ("stack", "cache", "hint"),
    [
        ("staging", {"api_user": "public, max-age=60"}, "must not be cached publicly"),
        ("staging", {"api_editor": "max-age=60"}, "'private' or 'no-store'"),
        ("staging", {"api_admin": "private, s-maxage=5"}, "must not be cached publicly"),
        ("staging", {"api_anonymous": "max-age=abc"}, "Cache-Control directives"),
        ("staging", {"postgres": "no-store"}, "not an API role"),
        ("prod", {"api_anonymous": "public, max-age=60"}, "not an API role"),
    ],
)
def test_cache_control_errors_name_their_key(stack: str, cache: dict[str, str], hint: str) -> None:
    raw = _with(_STAGING if stack == "staging" else _PROD, "domains.content.cacheControl", cache)
    problems = _problems(stack, raw)
    role = next(iter(cache))
    key = f"pgplatform:domains.content.cacheControl.{role}"
    assert any(p.startswith(key) and hint in p for p in problems), problems
