"""The one table of (message, wire bytes) that test_pgwire_codec.py runs every test over.

The wire bytes are written out by hand from the "Message Formats" page of the
PostgreSQL documentation (type byte, Int32 length including itself, body),
never produced by the encoder under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocols.pgwire import (
    AuthContext,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    GSSResponse,
    Message,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)

Side = Literal["startup", "frontend", "backend"]


@dataclass(frozen=True)
class Case:
    message: Message
    wire: bytes
    side: Side
    auth: AuthContext = "password"


def F(message: Message, wire: bytes, auth: AuthContext = "password") -> Case:
    return Case(message, wire, "frontend", auth)


def B(message: Message, wire: bytes) -> Case:
    return Case(message, wire, "backend")


def S(message: Message, wire: bytes) -> Case:
    return Case(message, wire, "startup")


KEY32 = bytes(range(32))

CASES: list[Case] = [
    # --- startup packets: Int32 length, Int32 code, body -------------------
    S(
        StartupMessage(
            protocol_version=196608, parameters=(("user", "alice"), ("database", "shop"))
        ),
        b"\x00\x00\x00\x22\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00\x00",
    ),
    S(StartupMessage(protocol_version=196610), b"\x00\x00\x00\x09\x00\x03\x00\x02\x00"),
    S(SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    S(GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
    S(
        CancelRequest(process_id=12345, secret_key=b"\xde\xad\xbe\xef"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef",
    ),
    S(
        CancelRequest(process_id=7, secret_key=KEY32),
        b"\x00\x00\x00\x2c\x04\xd2\x16\x2e\x00\x00\x00\x07" + KEY32,
    ),
    # --- frontend ----------------------------------------------------------
    F(Query(query="SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    # Latin-1 'é' in a non-UTF-8 client_encoding survives as a surrogate escape.
    F(Query(query="caf\udce9"), b"Q\x00\x00\x00\x09caf\xe9\x00"),
    F(
        Parse(statement="s1", query="SELECT $1", param_types=(23,)),
        b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17",
    ),
    F(Parse(query="SELECT 1"), b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00"),
    F(
        Bind(
            portal="p1",
            statement="s1",
            param_formats=(1,),
            params=(b"\x00\x00\x00\x2a", None),
            result_formats=(0, 1),
        ),
        b"B\x00\x00\x00\x22p1\x00s1\x00\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff\x00\x02\x00\x00\x00\x01",
    ),
    F(Bind(), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
    F(Describe(kind="S", name="s1"), b"D\x00\x00\x00\x08Ss1\x00"),
    F(Describe(kind="P"), b"D\x00\x00\x00\x06P\x00"),
    F(Execute(), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    F(Execute(portal="p1", max_rows=100), b"E\x00\x00\x00\x0bp1\x00\x00\x00\x00\x64"),
    F(Close(kind="P", name="p1"), b"C\x00\x00\x00\x08Pp1\x00"),
    F(Close(kind="S"), b"C\x00\x00\x00\x06S\x00"),
    F(Sync(), b"S\x00\x00\x00\x04"),
    F(Flush(), b"H\x00\x00\x00\x04"),
    F(Terminate(), b"X\x00\x00\x00\x04"),
    F(CopyData(data=b"1\tfoo\n"), b"d\x00\x00\x00\x0a1\tfoo\n"),
    F(CopyDone(), b"c\x00\x00\x00\x04"),
    F(CopyFail(message="bad row"), b"f\x00\x00\x00\x0cbad row\x00"),
    F(
        FunctionCall(
            function_oid=1598,
            arg_formats=(1,),
            args=(b"\x00\x00\x00\x07", None),
            result_format=1,
        ),
        b"F\x00\x00\x00\x1c\x00\x00\x06\x3e\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x07\xff\xff\xff\xff\x00\x01",
    ),
    F(PasswordMessage(password=b"secret"), b"p\x00\x00\x00\x0bsecret\x00", "password"),
    F(
        SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=abc"),
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
        "sasl-initial",
    ),
    F(
        SASLInitialResponse(mechanism="X", data=None),
        b"p\x00\x00\x00\x0aX\x00\xff\xff\xff\xff",
        "sasl-initial",
    ),
    F(SASLResponse(data=b"c=biws,r=abc,p=xyz"), b"p\x00\x00\x00\x16c=biws,r=abc,p=xyz", "sasl"),
    F(GSSResponse(data=b"\x60\x82"), b"p\x00\x00\x00\x06\x60\x82", "gss"),
    # --- backend -----------------------------------------------------------
    B(AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    B(AuthenticationKerberosV5(), b"R\x00\x00\x00\x08\x00\x00\x00\x02"),
    B(AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    B(
        AuthenticationMD5Password(salt=b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    B(AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07"),
    B(AuthenticationGSSContinue(data=b"tok"), b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok"),
    B(AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09"),
    B(
        AuthenticationSASL(mechanisms=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    ),
    B(
        AuthenticationSASLContinue(data=b"r=abc,s=c2FsdA==,i=4096"),
        b"R\x00\x00\x00\x1f\x00\x00\x00\x0br=abc,s=c2FsdA==,i=4096",
    ),
    B(AuthenticationSASLFinal(data=b"v=sig"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=sig"),
    B(
        BackendKeyData(process_id=4242, secret_key=b"\x0a\x0b\x0c\x0d"),
        b"K\x00\x00\x00\x0c\x00\x00\x10\x92\x0a\x0b\x0c\x0d",
    ),
    B(
        BackendKeyData(process_id=4242, secret_key=KEY32),
        b"K\x00\x00\x00\x28\x00\x00\x10\x92" + KEY32,
    ),
    B(
        ParameterStatus(name="client_encoding", value="UTF8"),
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00",
    ),
    B(
        ParameterDescription(type_oids=(23, 3000000000)),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\xb2\xd0\x5e\x00",
    ),
    B(
        RowDescription(
            fields=(
                FieldDescription(
                    name="id",
                    table_oid=16384,
                    column_number=1,
                    type_oid=23,
                    type_size=4,
                    type_modifier=-1,
                    format=0,
                ),
                FieldDescription(
                    name="?column?",
                    table_oid=0,
                    column_number=0,
                    type_oid=25,
                    type_size=-1,
                    type_modifier=-1,
                    format=1,
                ),
            )
        ),
        b"T\x00\x00\x00\x36\x00\x02"
        b"id\x00\x00\x00\x40\x00\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
        b"?column?\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x01",
    ),
    B(
        DataRow(values=(b"42", None, b"")),
        b"D\x00\x00\x00\x14\x00\x03\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    B(DataRow(values=()), b"D\x00\x00\x00\x06\x00\x00"),
    B(CommandComplete(tag="SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    B(EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    B(
        ErrorResponse(
            fields=(
                ("S", "ERROR"),
                ("V", "ERROR"),
                ("C", "42P01"),
                ("M", 'relation "t" does not exist'),
            )
        ),
        b'E\x00\x00\x00\x37SERROR\x00VERROR\x00C42P01\x00Mrelation "t" does not exist\x00\x00',
    ),
    B(
        NoticeResponse(fields=(("S", "NOTICE"), ("C", "00000"), ("M", "hi"))),
        b"N\x00\x00\x00\x18SNOTICE\x00C00000\x00Mhi\x00\x00",
    ),
    B(
        NotificationResponse(process_id=77, channel="jobs", payload="42"),
        b"A\x00\x00\x00\x10\x00\x00\x00\x4djobs\x0042\x00",
    ),
    B(NoData(), b"n\x00\x00\x00\x04"),
    B(PortalSuspended(), b"s\x00\x00\x00\x04"),
    B(ParseComplete(), b"1\x00\x00\x00\x04"),
    B(BindComplete(), b"2\x00\x00\x00\x04"),
    B(CloseComplete(), b"3\x00\x00\x00\x04"),
    B(
        CopyInResponse(format=0, column_formats=(0, 0)),
        b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00",
    ),
    B(CopyOutResponse(format=1, column_formats=(1,)), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    B(CopyBothResponse(format=0, column_formats=()), b"W\x00\x00\x00\x07\x00\x00\x00"),
    B(CopyData(data=b"1\tfoo\n"), b"d\x00\x00\x00\x0a1\tfoo\n"),
    B(CopyDone(), b"c\x00\x00\x00\x04"),
    B(
        NegotiateProtocolVersion(newest_minor=0, unrecognized=("_pq_.foo",)),
        b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
    ),
    B(ReadyForQuery(status="I"), b"Z\x00\x00\x00\x05I"),
    B(ReadyForQuery(status="T"), b"Z\x00\x00\x00\x05T"),
    B(ReadyForQuery(status="E"), b"Z\x00\x00\x00\x05E"),
    B(
        FunctionCallResponse(value=b"\x00\x00\x00\x01"),
        b"V\x00\x00\x00\x0c\x00\x00\x00\x04\x00\x00\x00\x01",
    ),
    B(FunctionCallResponse(value=None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
]
