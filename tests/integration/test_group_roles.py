"""pre_request's rules on real PostgreSQL through PgBouncer: roles from groups, the forward-auth
header, Cache-Control per role, the final role in X-Api-Role.

The staging stack maps groups to roles (``auth.groupRoles`` in Pulumi.staging.yaml) with
``api_anonymous`` as the base role: PostgREST v14 runs a verified token without a role claim as
``db-anon-role`` and hands the database its claims with ``role`` set to that role. Each request
here is PostgREST's per-request transaction run as the authenticator through the rendered
PgBouncer (``test_security_model.request``), so ``platform.pre_request()``'s ``SET LOCAL ROLE``
is seen by the query that follows, as under PostgREST.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from components.render.baseline import SCHEMA_SETTING
from tests.integration.pooler import RunningStack, one, running_stack
from tests.integration.test_security_model import request

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
BASE: Final = "api_anonymous"
WHO: Final = "SELECT current_user::text"


@pytest.fixture(scope="module")
def env(rendered_stack: Callable[[str], Path]) -> Iterator[RunningStack]:
    with running_stack("staging", rendered_stack("staging")) as running:
        yield running


@pytest.fixture
def client(env: RunningStack) -> Iterator[Conn]:
    with env.connect() as conn:
        yield conn


def roleless(sub: str | None, groups: Any) -> dict[str, Any]:
    """Claims PostgREST sets for a token without a role claim: role is the anon role."""
    claims: dict[str, Any] = {"role": BASE, "aud": "pgplatform-staging", "groups": groups}
    return claims if sub is None else {**claims, "sub": sub}


def current_role(conn: Conn, claims: dict[str, Any], role: str = BASE, **kw: Any) -> str:
    rows = request(conn, role, claims, WHO, **kw)
    return str(rows[0][0])


def test_the_rendered_mapping_is_installed(env: RunningStack) -> None:
    with env.cluster.connect(env.database) as admin:
        rows = admin.execute(
            "SELECT group_name, role::text, priority FROM platform.group_role ORDER BY priority"
        ).fetchall()
        base = admin.execute("SELECT role::text FROM platform.group_base_role").fetchall()
    assert rows == [("readers", "api_user", 10), ("editors", "api_editor", 20),
                    ("admins", "api_admin", 30)]  # fmt: skip
    assert base == [(BASE,)]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (["editors"], "api_editor"),
        (["readers"], "api_user"),
        (["readers", "admins", "editors"], "api_admin"),
        (["unknown", "editors"], "api_editor"),
        (["unknown"], BASE),
        ([], BASE),
        ("editors", BASE),  # not an array: no mapping
    ],
)
def test_groups_elevate_the_base_role_to_the_highest_priority(
    client: Conn, groups: Any, expected: str
) -> None:
    assert current_role(client, roleless("group-user", groups)) == expected


def test_the_elevated_role_holds_for_the_query_and_not_beyond(client: Conn) -> None:
    """The editor may write what the base role may not; the next request starts afresh."""
    claims = roleless("editor-by-group", ["editors"])
    rows = request(
        client,
        BASE,
        claims,
        "INSERT INTO identity.accounts (display_name) VALUES ('By group') RETURNING sub",
        rollback=True,
    )
    assert rows == [("editor-by-group",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        request(
            client,
            BASE,
            roleless("nobody-mapped", ["unknown"]),
            "INSERT INTO identity.accounts (display_name) VALUES ('No') RETURNING sub",
            rollback=True,
        )
    assert current_role(client, roleless(None, [])) == BASE


def test_no_subject_no_elevation(client: Conn) -> None:
    assert current_role(client, roleless(None, ["admins"])) == BASE


def test_a_token_naming_its_role_is_not_changed_by_groups(client: Conn) -> None:
    claims = {"role": "api_user", "sub": "user-with-groups", "groups": ["admins"]}
    assert current_role(client, claims, role="api_user") == "api_user"


@pytest.mark.parametrize("target", ["pgplatform_owner", "postgrest", "pg_read_all_data"])
def test_a_mapping_to_a_role_that_is_not_an_api_role_is_refused(
    env: RunningStack, client: Conn, target: str
) -> None:
    with env.cluster.connect(env.database) as admin:
        admin.execute(
            "INSERT INTO platform.group_role (group_name, role, priority) VALUES ('rogue', %s, 99)",
            (target,),
        )
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not an API role"):
            current_role(client, roleless("rogue-user", ["editors", "rogue"]))
    finally:
        with env.cluster.connect(env.database) as admin:
            admin.execute("DELETE FROM platform.group_role WHERE group_name = 'rogue'")


def test_only_the_admin_writes_the_mapping(client: Conn) -> None:
    for role in ("api_admin", "api_user", BASE):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            request(
                client,
                role,
                {"role": role, "sub": "writer"},
                "INSERT INTO platform.group_role VALUES ('mine', 'api_admin', 1000)",
            )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        client.execute("UPDATE platform.group_base_role SET role = 'api_admin'")
    client.rollback()


@pytest.mark.parametrize("forged", ["pgplatform_owner", "postgres", "postgrest"])
def test_a_forged_role_claim_is_still_refused(client: Conn, forged: str) -> None:
    claims = {"role": forged, "sub": "forger", "groups": ["admins"]}
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        current_role(client, claims, role=forged)


# -- the gateway's forward-auth header ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"x-auth-user": "user-self"}, True),
        ({"x-auth-user": "user-self", "x-auth-groups": "editors"}, True),
        ({"user-agent": "no-gateway-header"}, True),
        ({"x-auth-user": "someone-else"}, False),
        ({"x-auth-user": ""}, False),
    ],
)
def test_forward_auth_user_must_be_the_token_subject(
    client: Conn, headers: dict[str, str], allowed: bool
) -> None:
    claims = {"role": "api_user", "sub": "user-self"}
    if allowed:
        assert current_role(client, claims, role="api_user", headers=headers) == "api_user"
    else:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="x-auth-user"):
            current_role(client, claims, role="api_user", headers=headers)


def test_forward_auth_user_on_an_anonymous_request_is_refused(client: Conn) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="x-auth-user"):
        current_role(client, {"role": BASE}, headers={"x-auth-user": "user-self"})


# -- Cache-Control per role (staging: domains.content.cacheControl) -----------------------------


def rendered_schema_setting(build: Path, domain: str) -> tuple[str, str]:
    """The app.settings line of the domain's rendered postgrest.conf, as PostgREST sets it."""
    conf = one(sorted((build / "files").glob(f"{domain}-api-config-*/postgrest.conf")), "conf")
    for line in conf.read_text().splitlines():
        key, _, value = line.partition(" = ")
        if key == SCHEMA_SETTING:
            return key, value.strip('"')
    raise AssertionError(f"{SCHEMA_SETTING} missing from {conf}")


def response_headers(conf: Conn, build: Path, case: tuple[str, str, dict[str, Any], str]) -> Any:
    """PostgREST's transaction for a request to a domain; the response.headers it returns."""
    domain, role, claims, method = case
    key, schema = rendered_schema_setting(build, domain)
    with conf.transaction(force_rollback=True):
        conf.execute(f'SET LOCAL ROLE "{role}"')
        conf.execute(
            "SELECT set_config('request.jwt.claims', %s, true), "
            "set_config('request.method', %s, true), "
            "set_config('request.path', '/articles', true), "
            "set_config('request.headers', '{}', true), set_config(%s, %s, true)",
            (json.dumps(claims), method, key, schema),
        )
        conf.execute("SELECT platform.pre_request()")
        conf.execute("SELECT count(*) FROM content.articles")
        value = conf.execute("SELECT current_setting('response.headers', true)").fetchone()
    return json.loads(value[0]) if value and value[0] else None


# (domain, role PostgREST switched to, claims, method) -> Cache-Control or None (no header).
CACHE_CASES: Final[list[tuple[tuple[str, str, dict[str, Any], str], str | None]]] = [
    (("content", BASE, {"role": BASE}, "GET"), "public, max-age=60"),
    (("content", BASE, {"role": BASE}, "HEAD"), "public, max-age=60"),
    (("content", "api_user", {"role": "api_user", "sub": "u"}, "GET"), "private, max-age=30"),
    # Elevated by groups: the header of the final role, never the base role's public one.
    (("content", BASE, roleless("r", ["readers"]), "GET"), "private, max-age=30"),
    (("content", "api_editor", {"role": "api_editor", "sub": "e"}, "GET"), None),
    (("content", BASE, {"role": BASE}, "POST"), None),
    (("identity", BASE, {"role": BASE}, "GET"), None),
]


@pytest.mark.parametrize(("case", "expected"), CACHE_CASES)
def test_cache_control_per_domain_and_role(
    client: Conn,
    rendered_stack: Callable[[str], Path],
    case: tuple[str, str, dict[str, Any], str],
    expected: str | None,
) -> None:
    headers = response_headers(client, rendered_stack("staging"), case)
    assert headers is not None
    assert headers[1:] == ([] if expected is None else [{"Cache-Control": expected}])


# -- X-Api-Role: the final role, for the gateway's access log -----------------------------------

ROLE_CASES: Final[list[tuple[tuple[str, str, dict[str, Any], str], str]]] = [
    (("content", BASE, {"role": BASE}, "GET"), BASE),
    (("content", "api_user", {"role": "api_user", "sub": "u"}, "GET"), "api_user"),
    # Elevated by groups: the role the query ran as, not the token's base role.
    (("content", BASE, roleless("r", ["readers"]), "GET"), "api_user"),
    (("content", BASE, roleless("e", ["readers", "editors"]), "POST"), "api_editor"),
    (("identity", BASE, {"role": BASE}, "GET"), BASE),
]


@pytest.mark.parametrize(("case", "role"), ROLE_CASES)
def test_every_response_names_the_final_role(
    client: Conn,
    rendered_stack: Callable[[str], Path],
    case: tuple[str, str, dict[str, Any], str],
    role: str,
) -> None:
    headers = response_headers(client, rendered_stack("staging"), case)
    assert headers is not None
    assert headers[0] == {"X-Api-Role": role}
