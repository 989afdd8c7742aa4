"""The secret of the row-lookup digest (``flux state history --id``), one per store.

Each mutation is indexed by a keyed BLAKE2b of its table and key values (see
:mod:`.events`), so a row's changes are found without its values stored in the
clear. With a key anyone knows, a small key space (integer ids) could be walked
through the index: the key must be secret. It is, in order:

1. ``FLUX_LOOKUP_KEY``, when set (the same value on the sidecar and the CLI);
2. else 32 random bytes the recorder generates the first time it opens a store,
   kept in ``keys/lookup.key`` (mode 0600) beside the store file: for the default
   layout, ``<data dir>/keys/``, next to the development key pair. The CLI reads the
   same file when it opens the same store (``--data-dir`` or ``--store``), so
   ``flux state history`` finds rows recorded before; a copy of the store file alone
   cannot be searched by guessing keys.

Stores written before this file existed used a fixed key: a reader that finds no
key file falls back to it, so their rows stay findable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Final

from ..store import DB_FILENAME

KEY_FILE: Final = "lookup.key"
KEYS_DIR: Final = "keys"  # the data dir's key directory (recorder.keys.DEV_KEYS_DIR)
_LEGACY: Final = b"flux-mutation-key-v1"


def _hashed(text: bytes) -> bytes:
    return hashlib.blake2b(text, digest_size=32).digest()


def key_path(store_location: str | os.PathLike[str]) -> Path | None:
    """Where the store at ``store_location`` keeps its lookup key (the store file's
    directory, resolved as ``open_store`` resolves it); None for a server store."""
    text = os.fspath(store_location)
    if text.startswith(("postgresql://", "postgres://")):
        return None
    path = Path(text.removeprefix("sqlite://"))
    if path.suffix != ".db" or path.is_dir():
        path = path / DB_FILENAME
    return path.parent / KEYS_DIR / KEY_FILE


def lookup_key(
    store_location: str | os.PathLike[str] | None = None, *, create: bool = False
) -> bytes:
    """The digest key for a store. ``create``: the recorder, which makes it on first use."""
    given = os.environ.get("FLUX_LOOKUP_KEY", "")
    if given:
        return _hashed(given.encode())
    path = None if store_location is None else key_path(store_location)
    if path is None:
        return _hashed(_LEGACY)
    text = _read(path)
    if text is None and create:
        text = _create(path)
    if text is None:
        return _hashed(_LEGACY)  # nothing was recorded with a key of this store's own
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{path}: not a lookup key (expected hex)") from None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None


def _create(path: Path) -> str:
    """Writes a new key atomically; of two recorders racing, the first one's key wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    text = _read(path)
    if text is None:
        raise OSError(f"could not create {path}")
    return text
