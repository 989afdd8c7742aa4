"""MessageReader plus decode, one per direction.

The frontend decoder starts with an untyped startup packet and goes back to
untyped after SSLRequest / GSSENCRequest, because whatever answer the server
gives ('N', or a TLS/GSS handshake), the next packet the client sends in
the clear or inside the tunnel is again untyped. What a 'p' message means is
``auth_context``: the caller copies it from ``BackendDecoder.auth_context``
(or sets it) when the server's authentication request passes through.
"""

from __future__ import annotations

from ._decode_backend import decode_backend
from ._decode_frontend import decode_frontend, decode_startup
from ._framing import MAX_MESSAGE_LENGTH, MessageReader
from ._messages_backend import (
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationMD5Password,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendMessage,
)
from ._messages_frontend import AuthContext, FrontendMessage, SASLInitialResponse
from ._messages_startup import GSSENCRequest, SSLRequest, StartupPacket


def auth_context_for(message: BackendMessage) -> AuthContext | None:
    """What the client's next 'p' message will be, if ``message`` asks for one."""
    match message:
        case AuthenticationCleartextPassword() | AuthenticationMD5Password():
            return "password"
        case AuthenticationSASL():
            return "sasl-initial"
        case AuthenticationSASLContinue() | AuthenticationSASLFinal():
            return "sasl"
        case AuthenticationGSS() | AuthenticationSSPI() | AuthenticationGSSContinue():
            return "gss"
        case _:
            return None


class FrontendDecoder:
    """Decodes what a client sends, startup packets included.

    A decode error consumes the bad message; calling ``next_message`` again
    continues with the one after it (unless the error was in framing).
    After an SSLRequest, check ``reader.buffered == 0`` before starting TLS:
    bytes sent ahead of the handshake must not be trusted (CVE-2021-23214).
    """

    __slots__ = ("auth_context", "reader")

    def __init__(
        self, *, max_message_length: int = MAX_MESSAGE_LENGTH, startup: bool = True
    ) -> None:
        self.reader = MessageReader(max_message_length=max_message_length, startup=startup)
        self.auth_context: AuthContext = "password"

    def receive_data(self, data: bytes) -> None:
        self.reader.receive_data(data)

    def next_message(self) -> StartupPacket | FrontendMessage | None:
        startup = self.reader.expecting_startup
        item = self.reader.next_message()
        if item is None:
            return None
        type_byte, body = item
        if startup:
            packet = decode_startup(body)
            if isinstance(packet, SSLRequest | GSSENCRequest):
                self.reader.expect_startup()
            return packet
        message = decode_frontend(type_byte, body, auth=self.auth_context)
        if isinstance(message, SASLInitialResponse):
            # Every later 'p' in this exchange is a SASLResponse.
            self.auth_context = "sasl"
        return message


class BackendDecoder:
    """Decodes what a server sends, keeping ``auth_context`` for the client side."""

    __slots__ = ("auth_context", "reader")

    def __init__(self, *, max_message_length: int = MAX_MESSAGE_LENGTH) -> None:
        self.reader = MessageReader(max_message_length=max_message_length)
        self.auth_context: AuthContext = "password"

    def receive_data(self, data: bytes) -> None:
        self.reader.receive_data(data)

    def next_message(self) -> BackendMessage | None:
        item = self.reader.next_message()
        if item is None:
            return None
        message = decode_backend(*item)
        context = auth_context_for(message)
        if context is not None:
            self.auth_context = context
        return message
