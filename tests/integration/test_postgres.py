"""The stack's PostgreSQL (`stack.py up postgres`): a real server for the model registry's tests, on loopback only,
where every role gives its password (scram-sha-256), over TCP and over the socket alike."""

from __future__ import annotations

import socket
import struct
import uuid
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

import stack


@pytest.fixture(scope="module")
def engine(settings):
    eng = create_engine(settings.postgres_test_url)
    try:
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same thing
        pytest.fail(f"PostgreSQL does not answer at {settings.postgres_test_url}: run `make up` ({exc})")
    yield eng
    eng.dispose()


def test_table_write_read_drop(engine: Engine, settings):
    table = f"stack_check_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL, meta jsonb)"))
            conn.execute(
                text(f"INSERT INTO {table} VALUES (:id, :name, CAST(:meta AS jsonb))"),
                {"id": 1, "name": "half_plus_two", "meta": '{"version": 3}'},
            )
        # committed, and read back on a fresh connection
        engine.dispose()
        with engine.connect() as conn:
            row = conn.execute(text(f"SELECT id, name, meta FROM {table}")).one()
            assert row == (1, "half_plus_two", {"version": 3})
            who = conn.execute(
                text("SELECT current_user, current_database(), rolsuper FROM pg_roles WHERE rolname = current_user")
            ).one()
        assert who == (settings.postgres_user, "tfdeploy_registry_test", False)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None


def _tcp_listeners(port: int) -> set[str]:
    """Addresses with a TCP socket in LISTEN state on port, from the kernel's tables (/proc/net/tcp{,6})."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            # the kernel prints each 32-bit word in host byte order
            raw = b"".join(struct.pack("=I", int(addr_hex[i : i + 8], 16)) for i in range(0, len(addr_hex), 8))
            found.add(socket.inet_ntop(family, raw))
    return found


def test_listens_on_loopback_only(engine: Engine, settings):
    with engine.connect() as conn:
        assert conn.execute(text("SHOW listen_addresses")).scalar() == "127.0.0.1"
        assert conn.execute(text("SHOW port")).scalar() == str(settings.postgres_port)
        assert conn.execute(text("SELECT host(inet_server_addr())")).scalar() == "127.0.0.1"
    assert _tcp_listeners(settings.postgres_port) == {"127.0.0.1"}


def _connect(settings, host: str, user: str, **password: str):
    return psycopg2.connect(
        host=host, port=settings.postgres_port, user=user, dbname="postgres", connect_timeout=5, **password
    )


@pytest.mark.parametrize("role", ["registry", "superuser"])
@pytest.mark.parametrize("over", ["tcp", "socket"])
def test_a_connection_without_the_right_password_is_refused(settings, role, over):
    user = settings.postgres_user if role == "registry" else stack.PG_SUPERUSER
    host = "127.0.0.1" if over == "tcp" else str(settings.postgres_socket_dir)
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        _connect(settings, host, user)
    with pytest.raises(psycopg2.OperationalError, match=f'password authentication failed for user "{user}"'):
        _connect(settings, host, user, password="trust-me")
    right = stack.pg_passwords(settings)[user]
    assert user != settings.postgres_user or right == settings.postgres_password  # what the registry's URL carries
    conn = _connect(settings, host, user, password=right)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (user,)
    finally:
        conn.close()


def test_the_server_s_rules_ask_every_connection_for_a_password(settings):
    rules = stack._pg_query(settings, "SELECT type, auth_method, coalesce(error, '') FROM pg_hba_file_rules")
    assert sorted(rules) == [("host", "scram-sha-256", ""), ("local", "scram-sha-256", "")]
    [(method,)] = stack._pg_query(settings, "SHOW password_encryption")
    assert method == "scram-sha-256"
    roles = stack._pg_query(
        settings, "SELECT rolname, rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolcanlogin"
    )
    assert dict(roles) == {stack.PG_SUPERUSER: True, settings.postgres_user: True, settings.airflow_db_user: True}
