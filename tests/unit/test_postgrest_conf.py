"""postgrest.conf rendering: golden files, secrecy of the password, input validation."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from components.render.baseline import SCHEMA_SETTING
from components.render.checksum import content_checksum
from components.render.postgrest import (
    HS256_SECRET_FILE,
    JWKS_FILE,
    PostgrestConfInput,
    db_uri,
    jwt_key_reload_script,
    render_postgrest_conf,
    validate_role_claim_key,
)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
UPDATE_ENV = "PGPLATFORM_UPDATE_GOLDEN"

# Every option name of the PostgREST v14 configuration reference that we may emit; a misspelt
# key would be ignored by PostgREST, so the render must stay inside this list.
V14_OPTIONS = frozenset(
    {
        "admin-server-host", "admin-server-port", "db-aggregates-enabled", "db-anon-role",
        "db-channel", "db-channel-enabled", "db-config", "db-extra-search-path",
        "db-hoisted-tx-settings", "db-max-rows", "db-plan-enabled", "db-pool",
        "db-pool-acquisition-timeout", "db-pool-automatic-recovery", "db-pool-max-idletime",
        "db-pool-max-lifetime", "db-pre-config", "db-pre-request", "db-prepared-statements",
        "db-root-spec", "db-schemas", "db-tx-end", "db-uri", "jwt-aud", "jwt-cache-max-entries",
        "jwt-role-claim-key", "jwt-secret", "jwt-secret-is-base64", "log-level", "log-query",
        "openapi-mode", "openapi-security-active", "openapi-server-proxy-uri",
        "server-cors-allowed-origins", "server-host", "server-port", "server-timing-enabled",
        "server-trace-header", "server-unix-socket", "server-unix-socket-mode",
    }
)  # fmt: skip


def staging_identity() -> PostgrestConfInput:
    return PostgrestConfInput(
        domain="identity",
        schema="identity",
        db_host="pgbouncer-rw.pgplatform.svc.cluster.local",
        db_name="app",
        anon_role="api_anonymous",
        jwt_secret_file=HS256_SECRET_FILE,
        jwt_audience="pgplatform-staging",
        public_url="https://api.staging.example.com/identity",
        log_level="info",
        server_timing_enabled=True,
        trace_header="X-Request-Id",
    )


def prod_analytics() -> PostgrestConfInput:
    return PostgrestConfInput(
        domain="analytics",
        schema="analytics",
        db_host="pgbouncer-ro.pgplatform.svc.cluster.local",
        db_port=6432,
        db_name="app",
        db_sslmode="verify-full",
        db_sslrootcert="/etc/pgbouncer-ca/ca.crt",
        jwt_secret_file=JWKS_FILE,
        jwt_audience="https://api.example.com",
        role_claim_key='."https://example.com/claims".role',
        db_pool=20,
        db_max_rows=5000,
        public_url="https://api.example.com/analytics",
        cors_allowed_origins=("https://app.example.com", "https://admin.example.com"),
        openapi_mode="disabled",
    )


def parse_conf(text: str) -> dict[str, str]:
    """Minimal reader of the ``key = value`` lines (comments and blanks skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(" = ")
        assert sep, f"not a key = value line: {line!r}"
        assert key not in out, f"duplicate key {key}"
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("postgrest_staging_identity.conf", staging_identity),
        ("postgrest_prod_analytics.conf", prod_analytics),
    ],
)
def test_golden(name: str, factory: Any) -> None:
    rendered = render_postgrest_conf(factory())
    path = GOLDEN / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.write_text(rendered, encoding="utf-8")
        pytest.skip(f"{path} rewritten; review the diff and rerun without {UPDATE_ENV}")
    assert rendered == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("factory", [staging_identity, prod_analytics])
def test_only_known_v14_options(factory: Any) -> None:
    keys = set(parse_conf(render_postgrest_conf(factory())))
    # app.settings.* are free-form by design: PostgREST sets each per request transaction.
    options = {key for key in keys if not key.startswith("app.settings.")}
    assert options <= V14_OPTIONS, sorted(options - V14_OPTIONS)
    assert keys - options == {SCHEMA_SETTING}


@pytest.mark.parametrize("factory", [staging_identity, prod_analytics])
def test_pooler_and_source_safety_settings(factory: Any) -> None:
    conf = parse_conf(render_postgrest_conf(factory()))
    assert conf["db-prepared-statements"] == "false"
    assert conf["db-channel-enabled"] == "false"
    assert conf["db-config"] == "false"
    assert conf["jwt-secret-is-base64"] == "false"
    assert conf["db-extra-search-path"] == '""'
    assert conf["db-pre-request"] == '"platform.pre_request"'
    assert conf["admin-server-port"] != conf["server-port"]


def test_no_password_anywhere() -> None:
    names = {f.name for f in dataclasses.fields(PostgrestConfInput)}
    assert not {n for n in names if "pass" in n or "pwd" in n}, "no field may carry a password"
    for factory in (staging_identity, prod_analytics):
        inp = factory()
        uri = urlsplit(db_uri(inp))
        assert uri.password is None
        assert uri.username == "postgrest"
        text = render_postgrest_conf(inp)
        assert "password" not in parse_conf(text)["db-uri"].lower()
        assert "@" + inp.db_host in text, "user@host without a ':password' part"


def test_anonymous_access_follows_anon_role() -> None:
    assert (
        parse_conf(render_postgrest_conf(staging_identity()))["db-anon-role"] == '"api_anonymous"'
    )
    assert "db-anon-role" not in parse_conf(render_postgrest_conf(prod_analytics()))


def test_values_are_quoted_for_postgrest_syntax() -> None:
    conf = parse_conf(render_postgrest_conf(prod_analytics()))
    assert conf["jwt-role-claim-key"] == r'".\"https://example.com/claims\".role"'
    dollar = dataclasses.replace(prod_analytics(), role_claim_key=".$role")
    assert parse_conf(render_postgrest_conf(dollar))["jwt-role-claim-key"] == '".$$role"'
    staging = parse_conf(render_postgrest_conf(staging_identity()))
    assert staging["server-cors-allowed-origins"] == '"https://api.staging.example.com"'
    assert staging["jwt-secret"] == f'"@{HS256_SECRET_FILE}"'
    assert conf["db-uri"].endswith('sslmode=verify-full&sslrootcert=/etc/pgbouncer-ca/ca.crt"')


@pytest.mark.parametrize(
    "key",
    [
        ".role",
        ".postgrest.roles[1]",
        '."https://www.example.com/role".key',
        '.postgrest.roles[?(@ == "author")]',
        '.postgrest.roles[?(@ != "other")]',
        '.postgrest.roles[?(@ ^== "aut")]',
        '.postgrest.roles[?(@ ==^ "hor")]',
        '.postgrest.roles[?(@ *== "utho")]',
        '.realm_access.roles[?(@=="api_user")]',
    ],
)
def test_role_claim_key_accepts_v14_syntax(key: str) -> None:
    assert validate_role_claim_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "role",
        "$.role",
        ".",
        ".a..b",
        ".a[x]",
        '.roles[?(@ ~= "a")]',
        '.roles[?(@ == "a")].next',
        ".roles[?(@ == a)]",
        '."unterminated',
        ".ro le",
    ],
)
def test_role_claim_key_rejects_invalid_syntax(key: str) -> None:
    with pytest.raises(ValueError, match="role claim key"):
        validate_role_claim_key(key)


BAD_INPUTS: list[tuple[str, Any]] = [
    ("domain", "Identity"),
    ("schema", "public"),
    ("schema", "platform"),
    ("schema", "pg_catalog"),
    ("schema", "bad-name"),
    ("db_host", "host name"),
    ("db_host", "pgbouncer:5432"),
    ("db_port", 0),
    ("db_port", 70000),
    ("db_port", True),
    ("db_name", "app;drop"),
    ("db_user", "Postgrest"),
    ("db_sslmode", "strict"),
    ("db_sslrootcert", "/etc/ca.crt"),  # without verify-* mode
    ("anon_role", "postgrest"),
    ("anon_role", "web anon"),
    ("jwt_secret_file", "secret.json"),
    ("jwt_secret_file", "/etc/postgrest/../shadow"),
    ("jwt_secret_file", '/etc/"x'),
    ("jwt_audience", ""),
    ("jwt_audience", "two words"),
    ("jwt_audience", ":nope"),
    ("role_claim_key", "$.role"),
    ("jwt_cache_max_entries", -1),
    ("db_pool", 0),
    ("db_pool_acquisition_timeout", 0),
    ("db_max_rows", 0),
    ("pre_request", "pre_request"),
    ("pre_request", "platform.pre_request()"),
    ("extra_search_path", ["extensions"]),
    ("extra_search_path", ("identity",)),
    ("server_port", 65536),
    ("admin_server_port", 3000),
    ("public_url", "ftp://api.example.com"),
    ("public_url", "https://user:pw@api.example.com"),
    ("public_url", "https://api.example.com/x?y=1"),
    ("cors_allowed_origins", ("https://app.example.com/path",)),
    ("cors_allowed_origins", "https://app.example.com"),
    ("openapi_mode", "hidden"),
    ("log_level", "verbose"),
    ("server_timing_enabled", "yes"),
    ("trace_header", "X Request"),
]


@pytest.mark.parametrize(("field", "value"), BAD_INPUTS)
def test_invalid_input_names_the_field(field: str, value: Any) -> None:
    base = staging_identity()
    with pytest.raises(ValueError, match=rf"^PostgrestConfInput\.{field}: "):
        dataclasses.replace(base, **{field: value})


def test_valid_variants_are_accepted() -> None:
    base = staging_identity()
    dataclasses.replace(base, db_host="10.0.0.7")
    dataclasses.replace(base, db_host="fd00::7")
    dataclasses.replace(base, anon_role=None, jwt_cache_max_entries=0, db_max_rows=None)
    dataclasses.replace(base, pre_request=None, extra_search_path=("extensions",))
    assert "[fd00::7]:5432" in db_uri(dataclasses.replace(base, db_host="fd00::7"))


def test_checksum_is_stable_and_sensitive() -> None:
    text = render_postgrest_conf(staging_identity())
    assert content_checksum(text) == content_checksum(render_postgrest_conf(staging_identity()))
    assert re.fullmatch(r"[0-9a-f]{64}", content_checksum(text))
    changed = render_postgrest_conf(dataclasses.replace(staging_identity(), db_pool=11))
    assert content_checksum(text) != content_checksum(changed)
    assert content_checksum("ab", "c") != content_checksum("a", "bc")
    with pytest.raises(ValueError, match="at least one"):
        content_checksum()


def test_reload_script_watches_the_key_file() -> None:
    script = jwt_key_reload_script(JWKS_FILE, interval_seconds=20)
    assert f"key_file='{JWKS_FILE}'" in script
    assert "sleep 20 & wait $!" in script
    assert "pkill -USR2 -x postgrest" in script
    sh = shutil.which("sh")
    assert sh, "a POSIX sh is required"
    result = subprocess.run([sh, "-n"], input=script, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("key_file", "interval", "match"),
    [
        ("relative/jwks.json", 30, "key_file"),
        ("/etc/postgrest/jwt/it's.json", 30, "key_file"),
        (JWKS_FILE, 1, "interval_seconds"),
        (JWKS_FILE, 3600, "interval_seconds"),
    ],
)
def test_reload_script_rejects_bad_input(key_file: str, interval: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        jwt_key_reload_script(key_file, interval_seconds=interval)
