"""Envelope encryption of event payloads: the ``PayloadSealer`` for RSA recipients.

Each ``seal_batch`` draws one fresh AES-256-GCM data key and wraps it with
RSA-OAEP(SHA-256) once per recipient, so the RSA cost is paid per batch, never
per event; every payload then gets its own 96-bit nonce under that key.

The store keeps one blob per event and nothing per batch, and events of one
batch end up in different traces, exports and retention windows, so every blob
carries its own copy of the wrapped key and opens on its own. That costs about
400 bytes per event and recipient at 3072 bits; the alternative, a batch-key
table the blobs point into, needs a store schema change (see the report). On
read, unwrapping is cached per wrapped key, so a batch costs one RSA decryption.

Blob format v1, integers big-endian::

    magic       3   b"\\xc1FX"  (0xc1 is the one byte msgpack never emits, so a sealed
                                blob cannot be mistaken for a plain msgpack payload)
    version     1   0x01
    count       1   recipients, 1..255
    count x     8   key id (the 16 hex digits as raw bytes)
                2   length of the wrapped key
                n   RSA-OAEP(SHA-256, MGF1-SHA-256) wrapped 32-byte data key
    nonce      12
    ciphertext  *   AES-256-GCM(msgpack(payload)), 16-byte tag at the end

GCM's associated data is every byte before the nonce followed by the caller's
``associated`` bytes: editing the header (key ids, wrapped keys) breaks the tag,
and so does opening the blob for an event whose routing fields differ.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recorder.keys import KEY_ID_HEX, PrivateKey, PublicKey
from recorder.store import SEALED_MARKER, PayloadError, associated_data, pack, unpack

__all__ = [
    "DecryptionError",
    "EnvelopeSealer",
    "MalformedBlob",
    "MissingKey",
    "TamperedCiphertext",
    "associated_data",  # lives in recorder.store (stores must not import cryptography)
]

MAGIC: Final = b"\xc1FX"
VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
DATA_KEY_BYTES: Final = 32
MAX_RECIPIENTS: Final = 255
_KEY_ID_BYTES: Final = KEY_ID_HEX // 2
_ENTRY_HEAD: Final = struct.Struct(">8sH")
_PREAMBLE: Final = len(MAGIC) + 2  # magic, version, count
# One entry per batch read recently; a reader walks batches in write order, so a
# small LRU keeps hits high while bounding how many data keys sit in memory.
_CACHE_SIZE: Final = 256


class DecryptionError(PayloadError):
    """A sealed payload that cannot be opened. Never accompanied by partial plaintext."""


class MissingKey(DecryptionError):
    """None of the private keys given matches a recipient of the blob."""

    def __init__(self, key_ids: Sequence[str]) -> None:
        names = ", ".join(key_ids)
        super().__init__(f"payload is sealed to key id {names}; no matching private key given")
        self.key_ids = list(key_ids)


class TamperedCiphertext(DecryptionError):
    """The blob parsed but failed authentication (or its wrapped key did not decrypt)."""


class MalformedBlob(DecryptionError):
    """Not a sealed payload this version of flux can parse."""


class EnvelopeSealer:
    """Seals payloads to ``recipients`` and opens them with ``private_keys``.

    Record mode needs only recipients; display and replay need the private keys
    (several, after a rotation). With no recipients the sealer can only read, and
    ``seal_batch`` refuses rather than write plaintext. Safe to share between
    threads (the read cache is locked).
    """

    def __init__(
        self, recipients: Sequence[PublicKey], private_keys: Sequence[PrivateKey] = ()
    ) -> None:
        unique = list({key.key_id: key for key in recipients}.values())
        if len(unique) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients (got {len(unique)})")
        self._recipients = unique
        self._private = {key.key_id: key for key in private_keys}
        self._cache: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str | None:
        """What ``seal_batch`` stores as the key id: recipient ids, comma separated."""
        return ",".join(key.key_id for key in self._recipients) or None

    @property
    def private_key_ids(self) -> list[str]:
        """The ids of the private keys this sealer opens with."""
        return list(self._private)

    # -- sealing -----------------------------------------------------------------

    def seal_batch(
        self, payloads: Sequence[Mapping[str, Any]], associated: Sequence[bytes] = ()
    ) -> list[tuple[bytes, str | None]]:
        """One ``(blob, key_id)`` per payload, all under one fresh data key.

        ``associated`` is empty (no binding) or one ``associated_data(...)`` per payload.
        """
        if associated and len(associated) != len(payloads):
            raise ValueError(
                f"{len(associated)} associated data items for {len(payloads)} payloads"
            )
        if not payloads:
            return []  # no RSA work for an empty batch (counter-only writes)
        if not self._recipients:
            raise ValueError("no recipient public key: refusing to store payloads unsealed")
        data_key = AESGCM.generate_key(8 * DATA_KEY_BYTES)
        header = self._header(data_key)
        aead = AESGCM(data_key)
        key_id = self.key_id
        sealed: list[tuple[bytes, str | None]] = []
        # The data key is fresh and seals this batch only, so a counter makes every nonce
        # unique under its key by construction (the random prefix is belt and braces).
        # It also saves a getrandom() system call per event on the recorder's hot path.
        prefix = os.urandom(NONCE_BYTES - 8)
        for index, payload in enumerate(payloads):
            nonce = prefix + index.to_bytes(8, "big")
            aad = header + associated[index] if associated else header
            sealed.append((header + nonce + aead.encrypt(nonce, pack(payload), aad), key_id))
        return sealed

    def _header(self, data_key: bytes) -> bytes:
        parts = [MAGIC, bytes((VERSION, len(self._recipients)))]
        for key in self._recipients:
            wrapped = key.wrap(data_key)
            parts.append(_ENTRY_HEAD.pack(bytes.fromhex(key.key_id), len(wrapped)))
            parts.append(wrapped)
        return b"".join(parts)

    # -- opening -----------------------------------------------------------------

    def unseal(self, blob: bytes, key_id: str | None, associated: bytes = b"") -> dict[str, Any]:
        """The payload of a stored blob, as the store's reader wants it.

        A blob sealed to keys we do not hold comes back as ``{"__sealed__": key_id}``
        (display without the private key must work). Tampering and garbage raise:
        they are integrity failures, not a normal state, and a marker would hide them.
        ``key_id`` None is a plain msgpack payload written without encryption.
        """
        if key_id is None:
            if blob.startswith(MAGIC):
                raise TamperedCiphertext("a sealed payload is stored without its key id")
            try:
                value = unpack(blob)
            except Exception as exc:  # msgpack raises several unrelated types
                raise MalformedBlob(f"plain payload is not msgpack: {exc}") from None
            return value if isinstance(value, dict) else {"value": value}
        try:
            return self.open(blob, key_id, associated)
        except MissingKey:
            return {SEALED_MARKER: key_id}

    def open(
        self, blob: bytes, key_id: str | None = None, associated: bytes = b""
    ) -> dict[str, Any]:
        """Like ``unseal`` for a sealed blob, but a missing key raises ``MissingKey`` too.

        ``key_id``, when given, must be what ``seal_batch`` returned with the blob; a
        mismatch with the ids inside the blob means one of the two was altered.
        """
        entries, header_end = _parse(blob)
        ids = [raw.hex() for raw, _ in entries]
        if key_id is not None and key_id != ",".join(ids):
            raise TamperedCiphertext(
                f"blob is sealed to key id {','.join(ids)} but is stored as {key_id}"
            )
        match = next(((raw, w) for raw, w in entries if raw.hex() in self._private), None)
        if match is None:
            raise MissingKey(ids)
        # One recipient entry is enough: the header is in the AAD, so an altered
        # entry for any other recipient fails the tag below anyway.
        aead = self._data_key(self._private[match[0].hex()], match[1])
        nonce = blob[header_end : header_end + NONCE_BYTES]
        try:
            plain = aead.decrypt(
                nonce, blob[header_end + NONCE_BYTES :], blob[:header_end] + associated
            )
        except InvalidTag:
            raise TamperedCiphertext(
                "payload failed authentication: altered, or opened for another event "
                "than the one it was sealed for"
            ) from None
        value = unpack(plain)  # authenticated, so it is what seal_batch packed
        return value if isinstance(value, dict) else {"value": value}

    def _data_key(self, private: PrivateKey, wrapped: bytes) -> AESGCM:
        cache_key = (private.key_id, wrapped)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        # RSA outside the lock: readers on other threads are not serialized behind it.
        try:
            data_key = private.unwrap(wrapped)
        except ValueError:
            raise TamperedCiphertext(
                f"the data key wrapped for key id {private.key_id} does not decrypt"
            ) from None
        if len(data_key) != DATA_KEY_BYTES:
            raise TamperedCiphertext(f"unwrapped data key has {len(data_key)} bytes, not 32")
        aead = AESGCM(data_key)
        with self._lock:
            self._cache[cache_key] = aead
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return aead


def _parse(blob: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The recipient entries ``(raw key id, wrapped key)`` and where the header ends."""
    if not blob.startswith(MAGIC):
        raise MalformedBlob("not a sealed flux payload (bad magic)")
    if len(blob) < _PREAMBLE:
        raise MalformedBlob("sealed payload truncated in its header")
    version, count = blob[len(MAGIC)], blob[len(MAGIC) + 1]
    if version != VERSION:
        raise MalformedBlob(f"sealed payload format v{version}; this flux reads v{VERSION}")
    if count == 0:
        raise MalformedBlob("sealed payload names no recipient")
    entries: list[tuple[bytes, bytes]] = []
    offset = _PREAMBLE
    for _ in range(count):
        if offset + _ENTRY_HEAD.size > len(blob):
            raise MalformedBlob("sealed payload truncated in its recipient table")
        raw_id, length = _ENTRY_HEAD.unpack_from(blob, offset)
        offset += _ENTRY_HEAD.size
        if length == 0 or offset + length > len(blob):
            raise MalformedBlob("sealed payload has a bad wrapped key length")
        entries.append((raw_id, blob[offset : offset + length]))
        offset += length
    if len(blob) - offset < NONCE_BYTES + TAG_BYTES:
        raise MalformedBlob("sealed payload truncated before its ciphertext")
    return entries, offset
