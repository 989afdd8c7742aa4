"""A raw PostgreSQL protocol client for tests: send any frontend messages, see every
backend message, byte for byte (after SCRAM-SHA-256 authentication).

Drivers hide what the wire carries (a RowDescription they did not ask for, a NoData,
an error's position); comparing what this client receives direct and through the
sidecar compares exactly what a client could ever see.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

from protocols import pgwire


class RawClient:
    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        startup = pgwire.StartupMessage(parameters=(("user", user), ("database", database)))
        self.sock.sendall(pgwire.encode(startup))
        self._authenticate(password)
        while self.read()[0] != ord("Z"):
            pass

    def close(self) -> None:
        try:
            self.sock.sendall(pgwire.TERMINATE)
        finally:
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire -------------------------------------------------------------------

    def _recv(self, size: int) -> bytes:
        while len(self._buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def read(self) -> tuple[int, bytes]:
        """One whole backend message: (type byte, the message's bytes including header)."""
        head = self._recv(5)
        body = self._recv(struct.unpack("!I", head[1:])[0] - 4)
        return head[0], head + body

    def send(self, messages: Sequence[Any]) -> None:
        self.sock.sendall(
            b"".join(m if isinstance(m, bytes) else pgwire.encode(m) for m in messages)
        )

    def exchange(self, messages: Sequence[Any], *, until_ready: int = 1) -> list[bytes]:
        """Sends ``messages``; returns every backend message up to the ``until_ready``-th
        ReadyForQuery, raw."""
        self.send(messages)
        out: list[bytes] = []
        seen = 0
        while seen < until_ready:
            type_byte, message = self.read()
            out.append(message)
            if type_byte == ord("Z"):
                seen += 1
        return out

    # -- SCRAM-SHA-256 ------------------------------------------------------------

    def _auth_message(self) -> Any:
        _, message = self.read()
        decoded = pgwire.decode_backend(message[0], message[5:])
        if isinstance(decoded, pgwire.ErrorResponse):
            raise ConnectionError(decoded.message)
        return decoded

    def _authenticate(self, password: str) -> None:
        request = self._auth_message()
        if isinstance(request, pgwire.AuthenticationOk):
            return
        assert isinstance(request, pgwire.AuthenticationSASL), request
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        self.send([pgwire.SASLInitialResponse(mechanism="SCRAM-SHA-256",
                                              data=f"n,,{first_bare}".encode())])  # fmt: skip
        server_first = self._auth_message()
        assert isinstance(server_first, pgwire.AuthenticationSASLContinue)
        fields = dict(p.split("=", 1) for p in server_first.data.decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
        )
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={fields['r']}"
        auth = f"{first_bare},{server_first.data.decode()},{final_bare}".encode()
        signature = hmac.new(stored_key, auth, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{final_bare},p={base64.b64encode(proof).decode()}"
        self.send([pgwire.SASLResponse(data=final.encode())])
        assert isinstance(self._auth_message(), pgwire.AuthenticationSASLFinal)
        assert isinstance(self._auth_message(), pgwire.AuthenticationOk)


def decoded(messages: Sequence[bytes]) -> list[Any]:
    """The messages decoded, for readable assertion failures."""
    return [pgwire.decode_backend(m[0], m[5:]) for m in messages]
