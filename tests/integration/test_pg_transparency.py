"""A client sees through the sidecar exactly what it sees direct: values of every type in
text and binary, psql's whole output (errors, notices, COPY, meta-commands), notices and
parameter statuses."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import subprocess
import time
from typing import Any

import asyncpg
import psycopg
import pytest

from protocols import pgwire
from tests.fix_pg import PgServer

# Fixtures: the shared sidecar per server (``sidecar``).
from tests.fix_shared import shared_pg_sidecar, shared_sidecars  # noqa: F401
from tests.fix_sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(60)


def _upstream(sidecar: SidecarProcess) -> PgServer:
    assert sidecar.upstream is not None
    return sidecar.upstream


SETUP = """
CREATE TYPE t_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE t_pair AS (a int, b text, c t_mood[]);
"""

# (label, SQL expression): one column each.
EXPRESSIONS: list[tuple[str, str]] = [
    ("int2", "(-32768)::int2"), ("int2_max", "32767::int2"),
    ("int4", "2147483647"), ("int8", "(-9223372036854775808)::int8"),
    ("numeric_nan", "'NaN'::numeric"), ("numeric_inf", "'-Infinity'::numeric"),
    ("numeric_big",
     "123456789012345678901234567890.123456789012345678901234567890123456789::numeric"),
    ("numeric_small", "-0.000000000000000000000000000001::numeric"),
    ("numeric_scale", "1.10::numeric(10,4)"),
    ("float4", "3.14::float4"), ("float4_inf", "'-Infinity'::float4"),
    ("float4_nan", "'NaN'::float4"), ("float4_negzero", "'-0'::float4"),
    ("float8", "1.7976931348623157e308::float8"), ("float8_inf", "'Infinity'::float8"),
    ("float8_nan", "'NaN'::float8"), ("float8_negzero", "'-0'::float8"),
    ("float8_tiny", "5e-324::float8"),
    ("bool_t", "true"), ("bool_f", "false"),
    ("text", "E'tab\\tnewline\\n quote'' backslash\\\\ é ✓ 😀'::text"), ("text_empty", "''::text"),
    ("varchar", "'abc'::varchar(10)"), ("char", "'ab'::char(5)"), ("qchar", "'z'::\"char\""),
    ("name", "'a_name'::name"),
    ("bytea", "'\\x00ff10deadbeef'::bytea"), ("bytea_empty", "''::bytea"),
    ("date", "'2024-02-29'::date"),
    ("date_min", "'0001-01-01'::date"),
    ("time", "'23:59:59.999999'::time"), ("timetz", "'12:34:56.5+05:30'::timetz"),
    ("timestamp", "'2000-01-01 00:00:00.5'::timestamp"),
    ("timestamptz", "'1999-12-31 23:59:59.123456+00'::timestamptz"),
    ("interval", "'1 year 2 months 3 days 04:05:06.789'::interval"),
    ("interval_neg", "'-1 day -00:00:01'::interval"),
    ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid"),
    ("json", """'{"a": [1, 2.50, null], "b": {"c": "d"}}'::json"""),
    ("jsonb", """'{"a": [1, 2.50, null], "b": {"c": "d"}}'::jsonb"""),
    ("inet4", "'192.168.0.1/24'::inet"), ("inet6", "'::1'::inet"),
    ("cidr", "'10.0.0.0/8'::cidr"), ("macaddr", "'08:00:2b:01:02:03'::macaddr"),
    ("macaddr8", "'08:00:2b:01:02:03:04:05'::macaddr8"),
    ("arr_int", "ARRAY[1, 2, 3]"), ("arr_2d", "ARRAY[[1, 2], [3, 4]]::int8[]"),
    ("arr_nulls", "ARRAY['a', NULL, 'c ,\"}']"), ("arr_empty", "'{}'::int4[]"),
    ("arr_2d_nulls", "ARRAY[[NULL, 1.5], [2.5, NULL]]::numeric[]"),
    ("arr_lower", "'[0:1]={7,8}'::int[]"),
    ("int4range", "int4range(1, 10)"), ("range_empty", "'empty'::int4range"),
    ("numrange", "numrange(1.5, NULL, '(]')"),
    ("daterange", "'[2024-01-01,2024-02-01)'::daterange"),
    ("tstzrange", "tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00')"),
    ("int4multirange", "'{[1,3), [5,8)}'::int4multirange"),
    ("datemultirange_empty", "'{}'::datemultirange"),
    ("point", "'(1.5,-2)'::point"), ("line", "'{1,2,3}'::line"), ("lseg", "'[(0,0),(1,1)]'::lseg"),
    ("box", "'((0,0),(1,1))'::box"), ("path_open", "'[(0,0),(1,1),(2,0)]'::path"),
    ("path_closed", "'((0,0),(1,1),(2,0))'::path"), ("polygon", "'((0,0),(1,0),(0,1))'::polygon"),
    ("circle", "'<(0,0),1.5>'::circle"),
    ("money", "12345.67::money"),
    ("bit", "B'101'::bit(3)"), ("varbit", "B'1101001'::varbit"),
    ("tsvector", "'a fat cat sat on a mat'::tsvector"), ("tsquery", "'fat & (cat | rat)'::tsquery"),
    ("xml", "'<a x=\"1\">b</a>'::xml"),
    ("oid", "42::oid"), ("regtype", "'int4'::regtype"), ("pg_lsn", "'16/B374D848'::pg_lsn"),
    ("composite", "ROW(1, 'x y', ARRAY['sad', 'happy']::t_mood[])::t_pair"),
    ("composite_nulls", "ROW(NULL, NULL, NULL)::t_pair"),
    ("enum", "'happy'::t_mood"), ("enum_array", "ARRAY['ok', NULL]::t_mood[]"),
    ("null_int", "NULL::int"), ("null_text", "NULL::text"), ("null_unknown", "NULL"),
]  # fmt: skip

TYPES_QUERY = "SELECT " + ", ".join(f"{expr} AS {label}" for label, expr in EXPRESSIONS)
MANY_ROWS_QUERY = (
    "SELECT i, md5(i::text), repeat('x', i % 300), i * 0.5 FROM generate_series(1, 20000) i"
)


def _psycopg_results(dsn: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        for fmt, binary in (("text", False), ("binary", True)):
            with conn.cursor(binary=binary) as cur:
                cur.execute(TYPES_QUERY)
                out[f"{fmt} description"] = [(d.name, d.type_code) for d in cur.description or ()]
                rows = cur.fetchall()
                # repr: NaN != NaN, and -0.0 == 0.0; the representation tells them apart.
                out[f"{fmt} values"] = [repr(v) for v in rows[0]]
                out[f"{fmt} raw"] = [
                    cur.pgresult.get_value(0, i) for i in range(cur.pgresult.nfields)
                ]  # type: ignore[union-attr]
                cur.execute(MANY_ROWS_QUERY)
                out[f"{fmt} many"] = hashlib.sha256(repr(cur.fetchall()).encode()).hexdigest()
    return out


def _shown(value: Any) -> str:
    """repr, except for asyncpg's Path and Polygon whose repr is only an address."""
    if isinstance(value, asyncpg.types.Path | asyncpg.types.Polygon):
        return repr((type(value).__name__, value.points, getattr(value, "is_closed", True)))
    return repr(value)


async def _asyncpg_results(server: PgServer, host: str, port: int) -> dict[str, Any]:
    conn = await asyncpg.connect(host=host, port=port, user=server.user,
                                 password=server.password, database=server.dbname,
                                 timeout=10)  # fmt: skip
    try:
        row = await conn.fetchrow(TYPES_QUERY)
        assert row is not None
        many = await conn.fetch(MANY_ROWS_QUERY)
        return {
            "keys": list(row.keys()),
            "values": [_shown(v) for v in row.values()],
            "many": hashlib.sha256(repr([tuple(r) for r in many]).encode()).hexdigest(),
        }
    finally:
        await conn.close()


async def test_every_type_same_as_direct(sidecar: SidecarProcess) -> None:
    upstream = _upstream(sidecar)
    upstream.psql(SETUP)
    direct, proxied = await asyncio.gather(
        asyncio.to_thread(_psycopg_results, upstream.dsn()),
        asyncio.to_thread(_psycopg_results, sidecar.dsn()),
    )
    assert proxied == direct
    labels = [label for label, _ in EXPRESSIONS]
    values = dict(zip(labels, proxied["binary values"], strict=True))
    text_values = dict(zip(labels, proxied["text values"], strict=True))
    assert [d[0] for d in proxied["binary description"]] == labels
    # Spot checks that the values are the real ones, not merely equal on both paths.
    assert values["numeric_nan"] == "Decimal('NaN')" and values["float8_negzero"] == "-0.0"
    assert text_values["float4_nan"] == "nan" and values["int8"] == "-9223372036854775808"
    assert values["bytea"] == repr(b"\x00\xff\x10\xde\xad\xbe\xef")
    assert text_values["numeric_big"] == (
        "Decimal('123456789012345678901234567890.123456789012345678901234567890123456789')"
    )
    assert values["int4multirange"].startswith("Multirange([Range(1, 3, '[)'), Range(5, 8,")
    assert proxied["text raw"][labels.index("composite")] == b'(1,"x y","{sad,happy}")'
    assert proxied["text raw"][labels.index("money")] == b"$12,345.67"

    a_direct = await _asyncpg_results(upstream, upstream.host, upstream.port)
    a_proxied = await _asyncpg_results(upstream, sidecar.host, sidecar.port)
    assert a_proxied == a_direct
    assert a_proxied["keys"] == labels
    a_values = dict(zip(labels, a_proxied["values"], strict=True))
    assert a_values["float4_negzero"] == "-0.0"
    assert a_values["numeric_inf"] == "Decimal('-Infinity')"
    assert a_values["composite"] == "<Record a=1 b='x y' c=['sad', 'happy']>"
    assert a_values["polygon"].startswith("('Polygon', (asyncpg.pgproto.types.Point((0.0, 0.0)),")


# ---------------------------------------------------------------------------
# psql: everything it prints, byte for byte
# ---------------------------------------------------------------------------

PSQL_SCRIPT = r"""
\set VERBOSITY verbose
\echo start of script
CREATE TABLE tr (id int PRIMARY KEY, note text);
INSERT INTO tr VALUES (1, 'one'), (2, 'two');
SELECT * FROM tr ORDER BY id;
SET application_name = 'psql-transparency';
SHOW application_name;
SET client_encoding = 'LATIN1';
\encoding
RESET client_encoding;
\encoding
DO $$ BEGIN RAISE NOTICE 'hi %', 42;
  RAISE WARNING 'careful' USING DETAIL = 'some detail', HINT = 'a hint'; END $$;
SELECT 1/0;
INSERT INTO tr VALUES (1, 'dup');
\errverbose
BEGIN;
SELECT nonexistent_column FROM tr;
SELECT 1;
ROLLBACK;
COPY tr FROM STDIN;
3	three
4	fo\tur
\.
COPY tr FROM STDIN;
5	five
not-a-number	six
\.
COPY tr TO STDOUT WITH (FORMAT csv, HEADER);
\copy tr TO STDOUT
SELECT max(id) AS id FROM tr \gset first_
\echo max id is :first_id
\d tr
\x on
SELECT * FROM tr ORDER BY id LIMIT 2;
\x off
SELECT 'a' AS x; SELECT 'b' AS y \;
SELECT 'c' AS z;
\conninfo
SET TIME ZONE 'Asia/Kolkata';
SELECT '2024-01-01 00:00:00+00'::timestamptz;
DROP TABLE tr;
\echo end of script
"""


def _run_psql(server: PgServer, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    env.update(PGPASSWORD=server.password, PGCONNECT_TIMEOUT="10", LC_ALL="C", LANG="C",
               PGAPPNAME="flux-psql", PGTZ="UTC")  # fmt: skip
    cmd = [str(server.psql_bin), "-X", "-a", "-v", "ON_ERROR_STOP=0", "-h", server.host,
           "-p", str(port), "-U", server.user, "-d", server.dbname, "-f", "-"]  # fmt: skip
    return subprocess.run(cmd, input=PSQL_SCRIPT, env=env, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


def test_psql_output_is_byte_identical(sidecar: SidecarProcess) -> None:
    upstream = _upstream(sidecar)
    direct = _run_psql(upstream, upstream.port)
    proxied = _run_psql(upstream, sidecar.port)
    # \conninfo names the port connected to: the only legitimate difference.
    proxied_stdout = proxied.stdout.replace(f'port "{sidecar.port}"', f'port "{upstream.port}"')
    assert proxied.returncode == direct.returncode == 0
    assert proxied.stderr == direct.stderr
    assert proxied_stdout == direct.stdout
    # ...and the output is what the script is meant to produce.
    out, err = proxied.stdout, proxied.stderr
    assert "\\encoding\nLATIN1\n" in out and "\\encoding\nUTF8\n" in out  # ParameterStatus
    assert "end of script" in out and "max id is 4" in out and "psql-transparency" in out
    assert "NOTICE:  00000: hi 42" in err and "DETAIL:  some detail" in err
    assert "ERROR:  22012: division by zero" in err and "ERROR:  23505:" in err
    assert 'invalid input syntax for type integer: "not-a-number"' in err
    assert err.count("current transaction is aborted") == 1  # the SELECT 1 before ROLLBACK
    assert "4\tfo\\tur" in out and "2024-01-01 05:30:00+05:30" in out
    assert out.count("?column?") == 0 and "(0 rows)" not in out


# ---------------------------------------------------------------------------
# notices and parameter statuses reach the client
# ---------------------------------------------------------------------------


def test_notices_and_parameter_status(sidecar: SidecarProcess) -> None:
    notices: list[tuple[str | None, str | None, str | None]] = []
    with psycopg.connect(sidecar.dsn(application_name="before"), autocommit=True,
                         connect_timeout=10) as conn:  # fmt: skip
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
        )
        assert conn.info.parameter_status("application_name") == "before"
        conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'hi %', 42; RAISE WARNING 'w' USING ERRCODE = '01000'; END $$"
        )
        assert notices == [("NOTICE", "00000", "hi 42"), ("WARNING", "01000", "w")]
        conn.execute("SET application_name = 'x'")
        assert conn.info.parameter_status("application_name") == "x"
        conn.execute("SET TIME ZONE 'America/Sao_Paulo'")
        assert conn.info.parameter_status("TimeZone") == "America/Sao_Paulo"
        # A ParameterStatus in a transaction that is rolled back: the server reports the
        # old value again at the rollback, and so must the client's view.
        conn.execute("BEGIN")
        conn.execute("SET application_name = 'inside'")
        assert conn.info.parameter_status("application_name") == "inside"
        conn.execute("ROLLBACK")
        assert conn.info.parameter_status("application_name") == "x"
        # A notice raised in the middle of a result set arrives with it.
        notices.clear()
        conn.execute(
            "CREATE FUNCTION pg_temp.loud(i int) RETURNS int LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE NOTICE 'row %', i; RETURN i; END $$"
        )
        rows = conn.execute("SELECT pg_temp.loud(i) FROM generate_series(1, 3) i").fetchall()
        assert rows == [(1,), (2,), (3,)]
        assert notices == [("NOTICE", "00000", f"row {i}") for i in (1, 2, 3)]


# ---------------------------------------------------------------------------
# the raw protocol: every byte the backend sends, direct and through the sidecar
# ---------------------------------------------------------------------------


class _Wire:
    """A minimal protocol-3.0 client on a blocking socket (SCRAM-SHA-256 included)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)

    def close(self) -> None:
        self.sock.close()

    def send(self, *messages: pgwire.Message) -> None:
        self.sock.sendall(b"".join(pgwire.encode(m) for m in messages))

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def message(self) -> tuple[bytes, bytes]:
        header = self._exactly(5)
        length = int.from_bytes(header[1:], "big")
        return header, self._exactly(length - 4)

    def until_closed(self, timeout: float = 10.0) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        raise AssertionError("the server did not close the connection after Terminate")

    def startup(self, user: str, password: str, dbname: str) -> list[bytes]:
        """SSLRequest, StartupMessage, SCRAM; returns what the backend sent up to
        ReadyForQuery, with the random parts (SCRAM nonces, salts, proofs and the
        BackendKeyData) left out."""
        seen: list[bytes] = []
        self.sock.sendall(pgwire.SSL_REQUEST)
        seen.append(self._exactly(1))
        params = (("user", user), ("database", dbname), ("application_name", "flux-wire"))
        self.send(pgwire.StartupMessage(parameters=params))
        header, body = self.message()
        seen.append(header + body)  # AuthenticationSASL and its mechanisms
        assert header[:1] == b"R" and body[:4] == (10).to_bytes(4, "big"), header + body
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        self.send(pgwire.SASLInitialResponse(mechanism="SCRAM-SHA-256",
                                             data=f"n,,{first_bare}".encode()))  # fmt: skip
        header, body = self.message()
        assert header[:1] == b"R" and body[:4] == (11).to_bytes(4, "big"), header + body
        server_first = body[4:].decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        assert attrs["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
        self.send(pgwire.SASLResponse(data=f"{without_proof},p={proof.decode()}".encode()))
        header, body = self.message()
        assert header[:1] == b"R" and body[:4] == (12).to_bytes(4, "big"), header + body
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        verifier = hmac.new(server_key, auth_message, "sha256").digest()
        assert body[4:] == b"v=" + base64.b64encode(verifier)  # the server knew the password
        while True:
            header, body = self.message()
            if header[:1] == b"K":
                assert len(body) >= 8
                seen.append(header)  # the key itself is random
            else:
                seen.append(header + body)
            if header[:1] == b"Z":
                return seen


def _wire_script() -> list[pgwire.Message]:
    text, binary = pgwire.TEXT_FORMAT, pgwire.BINARY_FORMAT
    return [
        pgwire.Query(query="CREATE TEMP TABLE w (id int PRIMARY KEY, t text); SELECT 1, 'x'"),
        pgwire.Query(query=""),
        pgwire.Parse(
            statement="s1",
            query="SELECT i, md5(i::text) FROM generate_series(1, $1) i",
            param_types=(23,),
        ),
        pgwire.Describe(kind="S", name="s1"),
        pgwire.Bind(portal="p1", statement="s1", params=(b"5",), result_formats=(binary, text)),
        pgwire.Execute(portal="p1", max_rows=2),
        pgwire.Execute(portal="p1", max_rows=2),
        pgwire.Execute(portal="p1"),
        pgwire.Sync(),
        pgwire.Parse(query="SELECT 1/0"),
        pgwire.Bind(),
        pgwire.Execute(),
        pgwire.Parse(query="SELECT 'skipped until Sync'"),
        pgwire.Sync(),
        pgwire.Query(query="DO $$ BEGIN RAISE NOTICE 'hi %', 42; END $$"),
        pgwire.Query(query="SET application_name = 'flux-wire-2'"),
        pgwire.Query(query="BEGIN; SELECT nope; SELECT 1"),
        pgwire.Query(query="ROLLBACK"),
        pgwire.Query(query="COPY w FROM STDIN"),
        pgwire.CopyData(data=b"1\tone\n2\ttwo\n"),
        pgwire.CopyDone(),
        pgwire.Query(query="COPY w FROM STDIN"),
        pgwire.CopyData(data=b"3\tthree\nbad\tfour\n"),
        pgwire.CopyDone(),
        pgwire.Query(query="COPY (SELECT * FROM w ORDER BY id) TO STDOUT (FORMAT csv)"),
        pgwire.Query(query="SELECT repeat('y', 300000) FROM generate_series(1, 3)"),
        pgwire.Terminate(),
    ]


def _wire_session(server: PgServer, port: int, *, gssenc: bool) -> tuple[list[bytes], bytes]:
    wire = _Wire(server.host, port)
    try:
        if gssenc:
            # The sidecar cannot relay GSSAPI encryption, so it refuses it (a PostgreSQL
            # built with GSSAPI would answer "G"); libpq then carries on in the clear.
            wire.sock.sendall(pgwire.GSSENC_REQUEST)
            assert wire.sock.recv(1) == b"N"
        startup = wire.startup(server.user, server.password, server.dbname)
        wire.send(*_wire_script())
        return startup, wire.until_closed()
    finally:
        wire.close()


def test_backend_bytes_identical_on_the_wire(sidecar: SidecarProcess) -> None:
    upstream = _upstream(sidecar)
    direct = _wire_session(upstream, upstream.port, gssenc=False)
    proxied = _wire_session(upstream, sidecar.port, gssenc=True)
    assert proxied[0] == direct[0]  # startup, modulo SCRAM randomness and the cancel key
    assert proxied[1] == direct[1]  # every byte after ReadyForQuery, through Terminate
    startup, stream = proxied
    assert startup[0] == b"N"  # SSLRequest refused: neither has TLS configured
    assert b"SCRAM-SHA-256\x00" in startup[1]
    assert b"application_name\x00flux-wire\x00" in b"".join(startup)
    assert b"s\x00\x00\x00\x04" in stream  # PortalSuspended
    assert b"I\x00\x00\x00\x04" in stream  # EmptyQueryResponse
    assert b"division by zero" in stream and b"hi 42" in stream
    assert b"application_name\x00flux-wire-2\x00" in stream  # ParameterStatus
    assert b"d\x00\x00\x00\x0a1,one\nd\x00\x00\x00\x0a2,two\n" in stream  # CopyData
    assert b"invalid input syntax for type integer" in stream
    assert stream.count(b"Z\x00\x00\x00\x05") == 12  # one ReadyForQuery per cycle
    assert len(stream) > 900_000


# ---------------------------------------------------------------------------
# what the server sees
# ---------------------------------------------------------------------------


def test_client_giving_up_during_authentication_is_not_a_protocol_error(
    sidecar: SidecarProcess,
) -> None:
    """libpq without a password (psql's first attempt before it prompts) closes the
    connection when asked for one. Direct, the server logs nothing for that; through the
    sidecar it must not see anything else either, e.g. a Terminate in the middle of SCRAM."""
    upstream = _upstream(sidecar)
    offset = upstream.log_file.stat().st_size
    for port in (upstream.port, sidecar.port):
        dsn = upstream.dsn(port=port, password=None, passfile=os.devnull)
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(dsn, connect_timeout=10)
    # A marker the server does log, to know it has dealt with the attempts before it.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(sidecar.dsn(password="wrong"), connect_timeout=10)
    marker = 'password authentication failed for user "flux"'
    deadline = time.monotonic() + 5
    settle: float | None = None
    while True:
        with upstream.log_file.open("rb") as f:
            f.seek(offset)
            log = f.read().decode(errors="replace")
        now = time.monotonic()
        if marker in log and settle is None:
            settle = now + 0.5  # backends log in parallel: give the earlier ones a moment
        if (settle is not None and now >= settle) or "expected SASL" in log or now > deadline:
            break
        time.sleep(0.05)
    ours = [line for line in log.splitlines() if f"@{upstream.dbname} " in line]
    assert any(marker in line for line in ours), log
    assert not [line for line in ours if "08P01" in line or "expected SASL" in line], ours
