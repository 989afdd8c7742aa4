"""RSA recipient keys: generation, single-line text forms, key ids, the dev key pair.

Keys travel through environment variables and Kubernetes annotations, so their
text form is one line with no padding or newlines:
``fluxpub_v1_<base64url(DER SubjectPublicKeyInfo)>`` and
``fluxpriv_v1_<base64url(DER PKCS8)>``. PEM is accepted on load because that is
what other tools produce.

Errors never echo private key material: a message about a private key says what
was wrong, not what was given.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger(__name__)

PUBLIC_PREFIX: Final = "fluxpub_v1_"
PRIVATE_PREFIX: Final = "fluxpriv_v1_"
DEFAULT_BITS: Final = 3072
MIN_BITS: Final = 2048
KEY_ID_HEX: Final = 16

DEV_KEYS_DIR: Final = "keys"
DEV_PUBLIC_FILE: Final = "flux-dev.pub"
DEV_PRIVATE_FILE: Final = "flux-dev.key"

# OAEP with SHA-256 for both the digest and MGF1 (the DESIGN's "RSA-OAEP (SHA-256)").
# No label: the wrapped key then opens with stock tools (openssl pkeyutl) for recovery.
_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_ITEM = re.compile(r"[^\s,]+")
_PREFIX_LIKE = re.compile(r"^(flux[a-z]*)_(v\d+)_")


_K = TypeVar("_K")


class InvalidKey(ValueError):
    """A key text that cannot be used, with a message saying why."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str, what: str) -> bytes:
    body = "".join(text.split())  # tolerate a value wrapped by a terminal or YAML folding
    if len(body) % 4 == 1:
        raise InvalidKey(f"{what}: bad base64url (truncated: {len(body)} characters)")
    try:
        # validate=True rejects characters outside the alphabet instead of skipping them,
        # so a mangled paste fails here and not later as an unparseable DER blob.
        return base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise InvalidKey(f"{what}: bad base64url ({exc})") from None


def _spki_der(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_size(bits: int, what: str) -> None:
    if bits < MIN_BITS:
        raise InvalidKey(f"{what} is too small: {bits}-bit RSA (at least {MIN_BITS} bits)")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A recipient: payloads sealed to it are readable only with its private key.

    Equality and hashing go by the DER encoding, not object identity, so the same
    key loaded twice (text and PEM) is one recipient.
    """

    rsa: rsa.RSAPublicKey = field(compare=False, repr=False)
    der: bytes = field(init=False, repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        der = _spki_der(self.rsa)
        object.__setattr__(self, "der", der)
        object.__setattr__(self, "key_id", hashlib.sha256(der).hexdigest()[:KEY_ID_HEX])

    @property
    def bits(self) -> int:
        return self.rsa.key_size

    def to_text(self) -> str:
        return PUBLIC_PREFIX + _b64url(self.der)

    def wrap(self, secret: bytes) -> bytes:
        """RSA-OAEP encryption of a (short) data key to this recipient."""
        return self.rsa.encrypt(secret, _OAEP)


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """The secret half. ``repr`` shows only the key id, so it is safe in logs."""

    rsa: rsa.RSAPrivateKey = field(compare=False, repr=False)
    public: PublicKey = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", PublicKey(self.rsa.public_key()))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @property
    def bits(self) -> int:
        return self.rsa.key_size

    def to_text(self) -> str:
        der = self.rsa.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return PRIVATE_PREFIX + _b64url(der)

    def unwrap(self, wrapped: bytes) -> bytes:
        """Inverse of ``PublicKey.wrap``; raises ValueError when it does not decrypt."""
        return self.rsa.decrypt(wrapped, _OAEP)


def generate_keypair(bits: int = DEFAULT_BITS) -> tuple[PrivateKey, PublicKey]:
    _check_size(bits, "requested key")
    private = PrivateKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))
    return private, private.public


def key_id(key: PublicKey | PrivateKey) -> str:
    """First 16 hex digits of SHA-256 over the DER SubjectPublicKeyInfo (same for both halves)."""
    return key.key_id


def _prefix_problem(text: str, expected: str) -> str | None:
    """Why ``text`` does not start with ``expected``, naming what it looks like instead."""
    if text.startswith(expected):
        return None
    if text.startswith(PRIVATE_PREFIX):
        return f"this is a private key ({PRIVATE_PREFIX}...) where a public key was expected"
    if text.startswith(PUBLIC_PREFIX):
        return f"this is a public key ({PUBLIC_PREFIX}...) where a private key was expected"
    found = _PREFIX_LIKE.match(text)
    if found and found.group(1) == expected.split("_")[0]:
        return f"unsupported key format version {found.group(2)!r} (this flux reads {expected}...)"
    if text.startswith(("ssh-rsa ", "ssh-ed25519 ")):
        return f"an OpenSSH public key is not accepted; expected {expected}... or PEM"
    return f"expected a key starting with {expected!r} or a PEM block"


def load_public_key(text: str) -> PublicKey:
    """A public key from ``fluxpub_v1_...`` or PEM (SubjectPublicKeyInfo or PKCS#1)."""
    text = text.strip()
    if not text:
        raise InvalidKey("empty public key")
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            raise InvalidKey("this is a private key (PEM) where a public key was expected")
        try:
            loaded = serialization.load_pem_public_key(text.encode("ascii", "replace"))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidKey(f"public key: unreadable PEM ({exc})") from None
    else:
        problem = _prefix_problem(text, PUBLIC_PREFIX)
        if problem:
            raise InvalidKey(problem)
        der = _unb64url(text.removeprefix(PUBLIC_PREFIX), "public key")
        try:
            loaded = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            raise InvalidKey("public key: not a DER SubjectPublicKeyInfo") from None
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise InvalidKey(f"public key is not RSA (got {type(loaded).__name__})")
    _check_size(loaded.key_size, "public key")
    return PublicKey(loaded)


def load_private_key(text: str) -> PrivateKey:
    """A private key from ``fluxpriv_v1_...`` or unencrypted PEM (PKCS#8 or PKCS#1).

    OpenSSL's RSA consistency check is skipped: it costs about a second per 3072-bit
    key on every command that reads payloads, and it guards nothing here. A key that
    is not a consistent RSA key cannot unwrap a data key (OAEP's check fails), and a
    wrong data key cannot open a payload (GCM's tag fails), so the worst a bad key
    does is what a wrong key does: ``[encrypted]``, never wrong plaintext.
    """
    return _load_private(text, validate=False)


def _load_private(text: str, *, validate: bool) -> PrivateKey:
    # validate=False skips OpenSSL's RSA consistency check (about a second at 3072
    # bits); only for looking at the public half of a key we wrote ourselves.
    skip = not validate
    text = text.strip()
    if not text:
        raise InvalidKey("empty private key")
    if text.startswith("-----BEGIN"):
        header = text.split("\n", 1)[0]
        if "PRIVATE KEY" not in header:
            raise InvalidKey("this is a public key (PEM) where a private key was expected")
        if "ENCRYPTED" in header or "Proc-Type: 4,ENCRYPTED" in text:
            raise InvalidKey("private key: encrypted PEM is not supported; decrypt it first")
        try:
            loaded = serialization.load_pem_private_key(
                text.encode("ascii", "replace"), None, unsafe_skip_rsa_key_validation=skip
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # The library's message can quote parts of the input; keep secrets out of logs.
            raise InvalidKey("private key: unreadable PEM") from None
    else:
        problem = _prefix_problem(text, PRIVATE_PREFIX)
        if problem:
            raise InvalidKey(problem)
        der = _unb64url(text.removeprefix(PRIVATE_PREFIX), "private key")
        try:
            loaded = serialization.load_der_private_key(
                der, None, unsafe_skip_rsa_key_validation=skip
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InvalidKey("private key: not a DER PKCS#8 private key") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise InvalidKey(f"private key is not RSA (got {type(loaded).__name__})")
    _check_size(loaded.key_size, "private key")
    return PrivateKey(loaded)


def load_private_keys(text: str) -> list[PrivateKey]:
    """Every private key in ``text`` (rotation: old and new keys side by side).

    Keys are separated by commas, spaces or newlines; PEM blocks may be mixed in.
    Duplicates are dropped, first occurrence wins. Errors name the key by position.
    """
    return _load_many(text, load_private_key, "private")


def load_public_keys(text: str) -> list[PublicKey]:
    """Every public key in ``text``: recipients, each of which can open what is recorded."""
    return _load_many(text, load_public_key, "public")


_Key = TypeVar("_Key", PublicKey, PrivateKey)


def _load_many(text: str, load: Callable[[str], _Key], what: str) -> list[_Key]:
    items: list[tuple[int, str]] = [(m.start(), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    rest = _PEM_BLOCK.sub(lambda m: " " * len(m.group(0)), text)  # keep offsets for ordering
    for m in _ITEM.finditer(rest):
        items.append((m.start(), m.group(0)))
    items.sort()
    if not items:
        raise InvalidKey(f"no {what} key given")
    keys: dict[str, _Key] = {}
    for number, (_, item) in enumerate(items, 1):
        try:
            key = load(item)
        except InvalidKey as exc:
            raise InvalidKey(f"{what} key #{number}: {exc}") from None
        keys.setdefault(key.key_id, key)
    return list(keys.values())


# -- the development key pair ------------------------------------------------------


def dev_key_paths(data_dir: Path) -> tuple[Path, Path]:
    """``(public, private)`` file paths of the dev key pair in ``data_dir``."""
    keys = Path(data_dir) / DEV_KEYS_DIR
    return keys / DEV_PUBLIC_FILE, keys / DEV_PRIVATE_FILE


def _write_new(path: Path, text: str) -> bool:
    """Create ``path`` atomically with ``text``; False if it already exists.

    Written to a temporary name then hard-linked: a concurrent starter never reads
    a half-written key, and of two starters racing exactly one link succeeds.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise InvalidKey(f"{path}: not a key file (non-ASCII content)") from None


def _peek_private(text: str) -> PrivateKey:
    # Only its public half is used here: validating would cost every start a second.
    return _load_private(text, validate=False)


def _in_file(path: Path, load: Callable[[str], _K], text: str | None) -> _K | None:
    if text is None:
        return None
    try:
        return load(text)
    except InvalidKey as exc:
        raise InvalidKey(f"{path}: {exc}") from None


def load_dev_private_key(data_dir: Path) -> PrivateKey | None:
    """The dev private key in ``data_dir``, if there is one (readers use it when no key is set).

    Not validated (that costs a read command a quarter second): it is our own file, and a
    wrong key cannot yield plaintext anyway, since every payload is authenticated.
    """
    path = dev_key_paths(data_dir)[1]
    return _in_file(path, _peek_private, _read(path))


def ensure_dev_keypair(data_dir: Path) -> tuple[PublicKey, bool]:
    """The data dir's development key pair, created on first run; ``(public, created)``.

    The public key file decides what records are sealed to. Its private key file
    may be absent on purpose (recording needs only the public key), so only when
    both are missing is a new pair generated. Callers warn that it is a dev key.
    """
    pub_path, key_path = dev_key_paths(data_dir)
    # The umask is process-wide; narrowing it briefly can only make files created
    # meanwhile more private, never less. 0o077 covers the dir, the temp files and
    # their links, so the private key is never readable by others, not even briefly.
    old_umask = os.umask(0o077)
    try:
        pub_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = False
        for _ in range(3):  # a racing starter can only make us go round once more
            pub_text, key_text = _read(pub_path), _read(key_path)
            private = _in_file(key_path, _peek_private, key_text)
            public = _in_file(pub_path, load_public_key, pub_text)
            if public is not None:
                if private is not None and private.public != public:
                    raise InvalidKey(
                        f"{key_path} does not belong to {pub_path} "
                        f"(key ids {private.key_id} and {public.key_id})"
                    )
                _warn_if_open(key_path)
                return public, created
            if private is None:
                private, _ = generate_keypair()
                # Losing the race to another starter is fine: we go round and use its key.
                created = _write_new(key_path, private.to_text())
                if not created:
                    continue
            # Also the repair path after a crash between the two writes: the private
            # key is the truth and the public file is derived from it.
            _write_new(pub_path, private.public.to_text())
        raise InvalidKey(f"could not set up the dev key pair in {pub_path.parent}")
    finally:
        os.umask(old_umask)


def _warn_if_open(key_path: Path) -> None:
    # Someone may have copied the file with a wider mode; say so rather than fix it
    # silently, since the fix belongs to whoever manages that directory.
    with contextlib.suppress(FileNotFoundError):
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s is readable by others (mode %o); chmod 600 it", key_path, mode)
