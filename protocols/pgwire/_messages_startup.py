"""Startup-phase packets: the ones a client sends before any typed message.

They have no type byte: an Int32 length (including itself) then an Int32 code
that says which packet it is. A protocol version code means StartupMessage;
codes with 1234 in the high 16 bits are the special requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PROTOCOL_3_0: Final = 196608  # 3 << 16
PROTOCOL_3_2: Final = 196610  # PostgreSQL 18: longer cancel keys
SSL_REQUEST_CODE: Final = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE: Final = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE: Final = 80877102  # 1234 << 16 | 5678

# The largest declared length (length word included) we accept for a startup
# packet. PostgreSQL's MAX_STARTUP_PACKET_LENGTH is the same 10000 but counts
# from after the length word; being 4 bytes stricter keeps one simple meaning
# for every user of this constant and no real client comes near it.
STARTUP_MAX_LENGTH: Final = 10000

# Cancel keys: exactly 4 bytes in protocol 3.0; variable in 3.2, where the
# documentation sets 4 and 256 as the bounds.
MIN_SECRET_KEY_LENGTH: Final = 4
MAX_SECRET_KEY_LENGTH: Final = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupMessage:
    """The first packet of a normal session: protocol version and run-time parameters.

    ``parameters`` keeps wire order and duplicates, so re-encoding is byte-exact.
    """

    protocol_version: int = PROTOCOL_3_0
    parameters: tuple[tuple[str, str], ...] = ()

    @property
    def major(self) -> int:
        return self.protocol_version >> 16

    @property
    def minor(self) -> int:
        return self.protocol_version & 0xFFFF

    def get(self, name: str) -> str | None:
        """The value of parameter ``name`` (the last one wins, as in the server)."""
        found = None
        for key, value in self.parameters:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class SSLRequest:
    """Asks the server to switch to TLS; the answer is one byte, ``S`` or ``N``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GSSENCRequest:
    """Asks the server to switch to GSSAPI encryption; answered ``G`` or ``N``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest:
    """Sent on a fresh connection to cancel the query running in another backend."""

    process_id: int
    secret_key: bytes


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest
