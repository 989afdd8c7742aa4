"""Numeric registries from IANA "Domain Name System (DNS) Parameters".

The enums list more record types than the codec decodes into typed rdata:
names such as HTTPS or DS are wanted for display even though those records are
carried as raw `Unknown` rdata.  Anything not listed is shown in the RFC 3597
generic form (`TYPE65280`, `CLASS42`, ...).
"""

from __future__ import annotations

from enum import IntEnum


class RRType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    HINFO = 13
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    NAPTR = 35
    DNAME = 39
    OPT = 41
    DS = 43
    SSHFP = 44
    RRSIG = 46
    NSEC = 47
    DNSKEY = 48
    NSEC3 = 50
    NSEC3PARAM = 51
    TLSA = 52
    SVCB = 64
    HTTPS = 65
    TSIG = 250
    IXFR = 251
    AXFR = 252
    ANY = 255
    CAA = 257


class RRClass(IntEnum):
    IN = 1
    CH = 3
    HS = 4
    NONE = 254
    ANY = 255


class Opcode(IntEnum):
    QUERY = 0
    IQUERY = 1
    STATUS = 2
    NOTIFY = 4
    UPDATE = 5
    DSO = 6


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    YXDOMAIN = 6
    YXRRSET = 7
    NXRRSET = 8
    NOTAUTH = 9
    NOTZONE = 10
    DSOTYPENI = 11
    # Values above 15 only exist with EDNS0, whose OPT record carries the high bits.
    BADVERS = 16
    BADCOOKIE = 23


# Plain dicts: a lookup per displayed record should not go through Enum machinery.
_TYPE_NAMES = {member.value: member.name for member in RRType}
_CLASS_NAMES = {member.value: member.name for member in RRClass}
_OPCODE_NAMES = {member.value: member.name for member in Opcode}
_RCODE_NAMES = {member.value: member.name for member in Rcode}


def type_name(rtype: int) -> str:
    """`type_name(28) == "AAAA"`; unlisted types read `TYPE<n>` as in RFC 3597."""
    return _TYPE_NAMES.get(rtype) or f"TYPE{rtype}"


def class_name(rclass: int) -> str:
    return _CLASS_NAMES.get(rclass) or f"CLASS{rclass}"


def opcode_name(opcode: int) -> str:
    return _OPCODE_NAMES.get(opcode) or f"OPCODE{opcode}"


def rcode_name(rcode: int) -> str:
    return _RCODE_NAMES.get(rcode) or f"RCODE{rcode}"
