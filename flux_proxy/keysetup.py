"""Which keys a command uses: the recorder's recipients and the readers' private keys.

Recording needs only public keys; showing values (``flux trace``) and replaying need
private keys. Sources, strongest first: the flag, its environment variable, then the
development key pair in the data directory, which ``flux serve`` creates on a laptop
with nothing configured so that record, trace and replay just work there. In
production ``--require-key`` turns that fallback into a start-up error.

Private keys never go to the recorder process: it gets public key texts only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recorder.crypto import EnvelopeSealer
from recorder.keys import (
    InvalidKey,
    PrivateKey,
    PublicKey,
    dev_key_paths,
    ensure_dev_keypair,
    load_dev_private_key,
    load_private_keys,
    load_public_keys,
)

log = logging.getLogger("flux.keys")

GENERATE_HINT = "create a pair with `flux keys generate`"


class KeySetupError(Exception):
    """Keys missing or unusable; the message says what to fix and never quotes a key."""


@dataclass(frozen=True, slots=True)
class RecordingKeys:
    """What the recorder seals to. ``public_keys`` empty only with ``--no-encrypt``."""

    public_keys: list[PublicKey]
    source: str  # "configured", "dev-created", "dev", "disabled"
    dev_dir: Path | None = None

    @property
    def texts(self) -> list[str] | None:
        """For the recorder's command line; None means store plaintext."""
        return [key.to_text() for key in self.public_keys] or None

    def describe(self) -> str:
        ids = ", ".join(key.key_id for key in self.public_keys)
        match self.source:
            case "disabled":
                return (
                    "UNSAFE: --no-encrypt: payloads (rows, bind values, bodies, tokens) are "
                    "stored in plaintext; use it for benchmarks and debugging only"
                )
            case "dev-created" | "dev":
                verb = "created" if self.source == "dev-created" else "using"
                return (
                    f"{verb} a DEVELOPMENT key pair in {self.dev_dir} (key id {ids}): "
                    "recordings are readable by anyone who can read that directory. For "
                    f"production, {GENERATE_HINT}, set FLUX_PUBLIC_KEY and --require-key"
                )
            case _:
                return f"payloads are sealed to key id {ids}"


def recording_keys(
    *, public_key: str | None, data_dir: Path, require_key: bool, no_encrypt: bool
) -> RecordingKeys:
    """The recipients for ``flux serve``, creating the dev pair when nothing is configured."""
    if no_encrypt:
        if require_key:
            raise KeySetupError("--no-encrypt contradicts --require-key; drop one of them")
        return RecordingKeys([], "disabled")
    if public_key and public_key.strip():
        try:
            return RecordingKeys(load_public_keys(public_key), "configured")
        except InvalidKey as exc:
            raise KeySetupError(f"--public-key (FLUX_PUBLIC_KEY): {exc}") from None
    if require_key:
        raise KeySetupError(
            f"no public key: --require-key needs --public-key or FLUX_PUBLIC_KEY ({GENERATE_HINT})"
        )
    try:
        key, created = ensure_dev_keypair(data_dir)
    except (InvalidKey, OSError) as exc:
        raise KeySetupError(f"development key pair: {exc}") from None
    return RecordingKeys(
        [key], "dev-created" if created else "dev", dev_key_paths(data_dir)[0].parent
    )


def _expand(value: str) -> str:
    # ``@PATH`` reads a key file, which keeps the key out of shell history and `ps`.
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeySetupError(f"--private-key {value}: cannot read the key file ({exc})") from None


def private_keys(values: Sequence[str] | None, data_dir: Path | None) -> list[PrivateKey]:
    """The private keys given (several after a rotation), else the data dir's dev key.

    The dev key is only a fallback: with keys given, a recording sealed to another key
    must show as sealed, not open quietly with a key nobody asked for.
    """
    text = " ".join(_expand(v) for v in values or () if v.strip())
    if text.strip():
        try:
            return load_private_keys(text)
        except InvalidKey as exc:
            raise KeySetupError(f"--private-key (FLUX_PRIVATE_KEY): {exc}") from None
    if data_dir is None:
        return []
    try:
        dev = load_dev_private_key(data_dir)
    except InvalidKey as exc:
        raise KeySetupError(f"development key: {exc}") from None
    return [dev] if dev is not None else []


def replay_gap(keys: RecordingKeys, reader: EnvelopeSealer) -> str | None:
    """Why replay could not open what is being recorded now, if it could not."""
    missing = [k.key_id for k in keys.public_keys if k.key_id not in reader.private_key_ids]
    if not missing:
        return None
    return (
        f"no private key for key id {', '.join(missing)}: replay cannot open what is recorded "
        "now; give FLUX_PRIVATE_KEY (or --private-key) to a sidecar that replays"
    )


def reader_sealer(values: Sequence[str] | None, data_dir: Path | None) -> EnvelopeSealer:
    """Opens what it has keys for; the rest reads as ``[encrypted]``."""
    return EnvelopeSealer([], private_keys(values, data_dir))
