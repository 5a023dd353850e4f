"""pgbouncer.ini and userlist rendering: the fixed security settings, the allowlist, validation."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from components.render.pgbouncer import (
    ALLOWED_PARAMETERS,
    AUTH_QUERY,
    DEFAULT_PARAMETERS,
    INI_FILE,
    QUERY_TIMEOUT_MARGIN_S,
    PgBouncerConfigError,
    PgBouncerInput,
    pgbouncer_files,
    query_timeout_backstop,
    render_pgbouncer_ini,
    render_userlist,
    render_userlist_template,
    server_connections_per_host,
)
from tests.integration.pgbouncer import override_ini

pytestmark = pytest.mark.unit

# Every [pgbouncer] setting PgBouncer 1.18 knows (pgbouncer(5), "Generic settings" through
# "Low-level network settings"). An unknown key stops PgBouncer from starting.
PGBOUNCER_118_SETTINGS = frozenset(
    """logfile pidfile listen_addr listen_port unix_socket_dir unix_socket_mode unix_socket_group
    user pool_mode max_client_conn default_pool_size min_pool_size reserve_pool_size
    reserve_pool_timeout max_db_connections max_user_connections server_round_robin
    ignore_startup_parameters disable_pqexec application_name_add_host conffile service_name
    job_name stats_period auth_type auth_hba_file auth_file auth_user auth_query syslog
    syslog_ident syslog_facility log_connections log_disconnections log_pooler_errors log_stats
    verbose admin_users stats_users server_reset_query server_reset_query_always
    server_check_delay server_check_query server_fast_close server_lifetime server_idle_timeout
    server_connect_timeout server_login_retry client_login_timeout autodb_idle_timeout
    dns_max_ttl dns_nxdomain_ttl dns_zone_check_period resolv_conf client_tls_sslmode
    client_tls_key_file client_tls_cert_file client_tls_ca_file client_tls_protocols
    client_tls_ciphers client_tls_ecdhcurve client_tls_dheparams server_tls_sslmode
    server_tls_ca_file server_tls_key_file server_tls_cert_file server_tls_protocols
    server_tls_ciphers query_timeout query_wait_timeout client_idle_timeout
    idle_transaction_timeout suspend_timeout pkt_buf max_packet_size listen_backlog
    sbuf_loopcnt so_reuseport tcp_defer_accept tcp_socket_buffer tcp_keepalive tcp_keepcnt
    tcp_keepidle tcp_keepintvl tcp_user_timeout""".split()
)

CA = "/etc/pgbouncer/server-ca/ca.crt"


def prod_input(**changes: Any) -> PgBouncerInput:
    base = PgBouncerInput(
        database="app",
        rw_host="pg-rw.pgplatform.svc.cluster.local",
        ro_host="pg-ro.pgplatform.svc.cluster.local",
        server_tls_ca_file=CA,
    )
    return dataclasses.replace(base, **changes)


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            assert header.group(1) not in sections, f"section {line} twice"
            current = sections[header.group(1)] = {}
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        assert current is not None, f"setting outside a section: {line!r}"
        assert key.strip() not in current, f"{key.strip()} set twice"
        current[key.strip()] = value.strip()
    return sections


def test_security_settings_are_fixed() -> None:
    ini = parse_ini(render_pgbouncer_ini(prod_input()))["pgbouncer"]
    assert ini["pool_mode"] == "transaction"
    assert ini["auth_type"] == "scram-sha-256"
    assert ini["auth_user"] == "pgbouncer_auth"
    assert (
        ini["auth_query"]
        == AUTH_QUERY
        == ("SELECT usename, passwd FROM platform.pgbouncer_get_auth($1)")
    )
    assert ini["auth_file"] == "/etc/pgbouncer/auth/userlist.txt"
    assert ini["ignore_startup_parameters"] == "extra_float_digits,options"
    assert ini["server_tls_sslmode"] == "verify-full"
    assert ini["server_tls_ca_file"] == CA
    assert ini["client_tls_sslmode"] == "disable"
    assert ini["listen_addr"] == "0.0.0.0"  # noqa: S104
    assert ini["listen_port"] == "5432"
    assert ini["unix_socket_dir"] == ""
    assert ini["admin_users"] == ""
    assert ini["stats_users"] == "pgbouncer_exporter"
    for key in ("log_connections", "log_disconnections", "log_pooler_errors"):
        assert ini[key] == "1", key


def test_two_pools_per_database_without_credentials() -> None:
    databases = parse_ini(render_pgbouncer_ini(prod_input()))["databases"]
    assert databases == {
        "app_rw": "host=pg-rw.pgplatform.svc.cluster.local port=5432 dbname=app",
        "app_ro": "host=pg-ro.pgplatform.svc.cluster.local port=5432 dbname=app",
    }
    # No user= or password=: every pool logs in as the client, authenticated by auth_query.
    assert "password" not in render_pgbouncer_ini(prod_input())


def test_ro_pool_falls_back_to_the_primary() -> None:
    databases = parse_ini(render_pgbouncer_ini(prod_input(ro_host=None)))["databases"]
    assert databases["app_ro"] == databases["app_rw"].replace("app_rw", "app_ro")
    assert "pg-rw.pgplatform.svc.cluster.local" in databases["app_ro"]


def test_every_setting_is_known_to_pgbouncer() -> None:
    assert ALLOWED_PARAMETERS <= PGBOUNCER_118_SETTINGS
    everything = prod_input(
        client_tls_sslmode="require",
        client_tls_cert_file="/etc/pgbouncer/tls/tls.crt",
        client_tls_key_file="/etc/pgbouncer/tls/tls.key",
        parameters={"server_round_robin": "1"},
    )
    keys = set(parse_ini(render_pgbouncer_ini(everything))["pgbouncer"])
    assert keys <= PGBOUNCER_118_SETTINGS, keys - PGBOUNCER_118_SETTINGS
    assert {"client_tls_cert_file", "client_tls_key_file"} <= keys


def test_budget_fields_and_parameters_are_rendered() -> None:
    inp = prod_input(
        max_client_conn=400,
        default_pool_size=15,
        reserve_pool_size=3,
        max_db_connections=40,
        server_idle_timeout=120,
        query_wait_timeout=10,
        parameters={"server_lifetime": "1800", "min_pool_size": "2"},
    )
    ini = parse_ini(render_pgbouncer_ini(inp))["pgbouncer"]
    assert (ini["max_client_conn"], ini["default_pool_size"], ini["reserve_pool_size"]) == (
        "400",
        "15",
        "3",
    )
    assert (ini["max_db_connections"], ini["server_idle_timeout"]) == ("40", "120")
    assert ini["query_wait_timeout"] == "10"
    assert ini["server_lifetime"] == "1800"  # overrides the platform default
    assert ini["min_pool_size"] == "2"
    assert ini["stats_period"] == DEFAULT_PARAMETERS["stats_period"]


def test_query_timeout_backstop_lies_above_every_role_timeout() -> None:
    assert query_timeout_backstop([3000, 5000, 30_000]) == 30 + QUERY_TIMEOUT_MARGIN_S
    assert query_timeout_backstop([30_001]) == 31 + QUERY_TIMEOUT_MARGIN_S
    ini = parse_ini(render_pgbouncer_ini(prod_input(query_timeout=35)))["pgbouncer"]
    assert ini["query_timeout"] == "35"
    assert parse_ini(render_pgbouncer_ini(prod_input()))["pgbouncer"]["query_timeout"] == "0"
    with pytest.raises(PgBouncerConfigError, match=r"^query_timeout: "):
        query_timeout_backstop([])


def test_render_is_deterministic_and_files_map_names() -> None:
    assert render_pgbouncer_ini(prod_input()) == render_pgbouncer_ini(prod_input())
    assert pgbouncer_files(prod_input()) == {INI_FILE: render_pgbouncer_ini(prod_input())}


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({}, "verify-full"),
        ({"server_tls_sslmode": "verify-ca"}, "verify-ca"),
        ({"server_tls_ca_file": None}, "require"),
        ({"server_tls_ca_file": None, "server_tls_sslmode": "disable"}, "disable"),
    ],
)
def test_server_tls_mode(changes: dict[str, Any], mode: str) -> None:
    ini = parse_ini(render_pgbouncer_ini(prod_input(**changes)))["pgbouncer"]
    assert ini["server_tls_sslmode"] == mode
    assert ("server_tls_ca_file" in ini) == (changes.get("server_tls_ca_file", CA) is not None)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"database": "App-1"}, "database"),
        ({"rw_host": "pg host=evil"}, "rw_host"),
        ({"ro_host": "pg\nuser=postgres"}, "ro_host"),
        ({"listen_addr": "0.0.0.0\nauth_type=trust"}, "listen_addr"),
        ({"unix_socket_dir": "tmp"}, "unix_socket_dir"),
        ({"auth_file": "userlist.txt"}, "auth_file"),
        ({"server_port": 0}, "server_port"),
        ({"listen_port": 70000}, "listen_port"),
        ({"default_pool_size": 0}, "default_pool_size"),
        ({"reserve_pool_size": -1}, "reserve_pool_size"),
        ({"max_client_conn": True}, "max_client_conn"),
        ({"max_client_conn": 10, "default_pool_size": 20}, "max_client_conn"),
        ({"max_db_connections": 5}, "max_db_connections"),
        ({"query_wait_timeout": 1.5}, "query_wait_timeout"),
        ({"server_tls_sslmode": "strict"}, "server_tls_sslmode"),
        ({"server_tls_sslmode": "require"}, "server_tls_sslmode"),
        ({"server_tls_ca_file": None, "server_tls_sslmode": "verify-full"}, "server_tls_ca_file"),
        ({"client_tls_sslmode": "require"}, "client_tls_cert_file"),
        ({"client_tls_sslmode": "on"}, "client_tls_sslmode"),
        ({"stats_users": "pgbouncer_exporter"}, "stats_users"),
        ({"stats_users": ("pgbouncer_auth",)}, "stats_users"),
        ({"admin_users": ("Admin",)}, "admin_users"),
        ({"parameters": {"auth_type": "trust"}}, "parameters.auth_type"),
        ({"parameters": {"pool_mode": "session"}}, "parameters.pool_mode"),
        ({"parameters": {"listen_addr": "*"}}, "parameters.listen_addr"),
        ({"parameters": {"ignore_startup_parameters": "search_path"}},
         "parameters.ignore_startup_parameters"),
        ({"parameters": {"default_pool_size": "50"}}, "parameters.default_pool_size"),
        ({"parameters": {"made_up": "1"}}, "parameters.made_up"),
        ({"parameters": {"server_lifetime": "1\nauth_type = trust"}}, "parameters.server_lifetime"),
        ({"parameters": {"server_check_query": " select 1"}}, "parameters.server_check_query"),
    ],
)  # fmt: skip
def test_invalid_input_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PgBouncerConfigError) as caught:
        prod_input(**changes)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_valid_variants_construct() -> None:
    """The error cases above fail for their own reason, not because the base input is bad."""
    prod_input(max_db_connections=0)
    prod_input(max_db_connections=20)
    prod_input(parameters={"server_check_query": "select 1", "server_lifetime": "60"})
    prod_input(ro_host=None, server_tls_ca_file=None, server_tls_sslmode="disable")
    prod_input(stats_users=(), admin_users=("pgbouncer_admin",), listen_addr="*")


def test_userlist_doubles_quotes_and_sorts() -> None:
    text = render_userlist({"pgbouncer_exporter": 'pa"ss', "pgbouncer_auth": "s3cret"})
    assert text == '"pgbouncer_auth" "s3cret"\n"pgbouncer_exporter" "pa""ss"\n'


@pytest.mark.parametrize(
    ("users", "field"),
    [({"pgbouncer_auth": "a\nb"}, "users.pgbouncer_auth"), ({"Bad User": "x"}, "users")],
)
def test_userlist_rejects_bad_entries(users: dict[str, str], field: str) -> None:
    with pytest.raises(PgBouncerConfigError) as caught:
        render_userlist(users)
    assert caught.value.field == field


def test_userlist_template_for_external_secrets() -> None:
    text = render_userlist_template(
        {"pgbouncer_auth": "auth_password", "pgbouncer_exporter": "exporter_password"}
    )
    assert text == (
        '"pgbouncer_auth" "{{ .auth_password | replace "\\"" "\\"\\"" }}"\n'
        '"pgbouncer_exporter" "{{ .exporter_password | replace "\\"" "\\"\\"" }}"\n'
    )
    with pytest.raises(PgBouncerConfigError) as caught:
        render_userlist_template({"pgbouncer_auth": "auth-password }}"})
    assert caught.value.field == "users.pgbouncer_auth"


def test_server_connection_budget() -> None:
    inp = prod_input(default_pool_size=10, reserve_pool_size=2)
    assert server_connections_per_host(inp, users=2) == {
        "pg-rw.pgplatform.svc.cluster.local": 24,
        "pg-ro.pgplatform.svc.cluster.local": 24,
    }
    # Without replicas both pools land on the primary.
    assert server_connections_per_host(dataclasses.replace(inp, ro_host=None), users=2) == {
        "pg-rw.pgplatform.svc.cluster.local": 48
    }
    capped = dataclasses.replace(inp, max_db_connections=15)
    assert server_connections_per_host(capped, users=2)["pg-rw.pgplatform.svc.cluster.local"] == 15
    with pytest.raises(PgBouncerConfigError) as caught:
        server_connections_per_host(inp, users=0)
    assert caught.value.field == "users"


def test_test_harness_overrides_only_paths_ports_and_hosts() -> None:
    """The integration tests run the rendered ini; only what cannot match a test box changes."""
    rendered = render_pgbouncer_ini(prod_input())
    changed = override_ini(
        rendered,
        listen_addr="127.0.0.1",
        listen_port=6543,
        server_host="127.0.0.1",
        server_port=5999,
        paths={"auth_file": "/tmp/t/userlist.txt", "server_tls_ca_file": "/tmp/t/ca.crt"},
    )
    diff = {
        (before, after)
        for before, after in zip(rendered.splitlines(), changed.splitlines(), strict=True)
        if before != after
    }
    assert {after for _, after in diff} == {
        "app_rw = host=127.0.0.1 port=5999 dbname=app",
        "app_ro = host=127.0.0.1 port=5999 dbname=app",
        "listen_addr = 127.0.0.1",
        "listen_port = 6543",
        "auth_file = /tmp/t/userlist.txt",
        "server_tls_ca_file = /tmp/t/ca.crt",
    }
    with pytest.raises(ValueError, match="not path settings"):
        override_ini(
            rendered,
            listen_addr="127.0.0.1",
            listen_port=1,
            server_host="h",
            server_port=1,
            paths={"auth_type": "trust"},
        )
    with pytest.raises(ValueError, match="has no"):
        override_ini(
            render_pgbouncer_ini(prod_input(server_tls_ca_file=None)),
            listen_addr="127.0.0.1",
            listen_port=1,
            server_host="h",
            server_port=1,
            paths={"server_tls_ca_file": "/tmp/ca.crt"},
        )
