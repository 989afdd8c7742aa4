"""recorder.keys: text forms, PEM, key ids, helpful errors and the dev key pair."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from recorder.keys import (
    DEFAULT_BITS,
    PRIVATE_PREFIX,
    PUBLIC_PREFIX,
    InvalidKey,
    PrivateKey,
    PublicKey,
    dev_key_paths,
    ensure_dev_keypair,
    generate_keypair,
    key_id,
    load_private_key,
    load_private_keys,
    load_public_key,
)


@pytest.fixture(scope="module")
def pair() -> tuple[PrivateKey, PublicKey]:
    return generate_keypair(2048)  # the minimum: fast, and enough to test the forms


@pytest.fixture(scope="module")
def other() -> PrivateKey:
    return generate_keypair(2048)[0]


def pem_public(key: PublicKey, fmt: serialization.PublicFormat) -> str:
    return key.rsa.public_bytes(serialization.Encoding.PEM, fmt).decode()


def pem_private(key: PrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.rsa.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()


def test_default_generation_is_3072_bits() -> None:
    private, public = generate_keypair()
    assert private.bits == public.bits == DEFAULT_BITS == 3072
    assert private.public == public


def test_text_forms_round_trip(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, public = pair
    pub_text, priv_text = public.to_text(), private.to_text()
    for text in (pub_text, priv_text):
        assert "\n" not in text and " " not in text and "=" not in text
    assert pub_text.startswith(PUBLIC_PREFIX) and priv_text.startswith(PRIVATE_PREFIX)
    assert load_public_key(pub_text) == public
    loaded = load_private_key(priv_text)
    assert loaded == private and loaded.public == public
    # Values pasted with surrounding whitespace or padding still load.
    assert load_public_key(f"  {pub_text}\n") == public


def test_pem_accepted(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, public = pair
    spki = pem_public(public, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = pem_public(public, serialization.PublicFormat.PKCS1)
    assert load_public_key(spki) == load_public_key(pkcs1) == public
    pkcs8 = pem_private(private, serialization.PrivateFormat.PKCS8)
    traditional = pem_private(private, serialization.PrivateFormat.TraditionalOpenSSL)
    assert load_private_key(pkcs8) == load_private_key(traditional) == private


def test_key_id_is_sha256_of_spki(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, public = pair
    der = public.rsa.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hashlib.sha256(der).hexdigest()[:16]
    assert key_id(public) == key_id(private) == public.key_id == expected
    assert len(expected) == 16


def test_private_key_repr_hides_the_secret(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, public = pair
    text = repr(private)
    assert public.key_id in text
    assert private.to_text()[len(PRIVATE_PREFIX) : len(PRIVATE_PREFIX) + 40] not in text


def test_load_private_keys_for_rotation(
    pair: tuple[PrivateKey, PublicKey], other: PrivateKey
) -> None:
    first, _ = pair
    a, b = first.to_text(), other.to_text()
    # Commas, spaces, tabs and newlines all separate; a repeated key counts once.
    assert load_private_keys(f" {a} ,\n\t{a}\n{b}, ") == [first, other]
    pem = pem_private(other, serialization.PrivateFormat.PKCS8)
    assert load_private_keys(f"{a}\n{pem}") == [first, other]
    assert load_private_keys(f"{pem}\n{a}") == [other, first]


def test_load_private_keys_errors_name_the_position(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, public = pair
    with pytest.raises(InvalidKey, match="no private key"):
        load_private_keys(" ,\n ")
    with pytest.raises(InvalidKey, match=r"#2: this is a public key"):
        load_private_keys(f"{private.to_text()},{public.to_text()}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty public key"),
        ("fluxkey_v1_AAAA", "starting with 'fluxpub_v1_'"),
        ("fluxpub_v2_AAAA", "unsupported key format version 'v2'"),
        ("fluxpub_v1_not*base64!", "bad base64url"),
        ("fluxpub_v1_AAAAA", "bad base64url"),
        ("fluxpub_v1_AAAA", "not a DER SubjectPublicKeyInfo"),
        ("ssh-rsa AAAAB3NzaC1yc2E user@host", "OpenSSH public key is not accepted"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "unreadable PEM"),
    ],
)
def test_invalid_public_texts(text: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        load_public_key(text)


def test_private_key_where_public_expected(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, _ = pair
    with pytest.raises(InvalidKey, match=r"private key .* where a public key was expected"):
        load_public_key(private.to_text())
    with pytest.raises(InvalidKey, match=r"private key .* where a public key was expected"):
        load_public_key(pem_private(private, serialization.PrivateFormat.PKCS8))


def test_public_key_where_private_expected(pair: tuple[PrivateKey, PublicKey]) -> None:
    _, public = pair
    with pytest.raises(InvalidKey, match=r"public key .* where a private key was expected"):
        load_private_key(public.to_text())
    spki = pem_public(public, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(InvalidKey, match=r"public key .* where a private key was expected"):
        load_private_key(spki)


def test_not_rsa_is_rejected() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pub = ed.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_text = PUBLIC_PREFIX + _b64(ed_pub)
    with pytest.raises(InvalidKey, match=r"not RSA .*Ed25519"):
        load_public_key(ed_text)
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(InvalidKey, match="not RSA"):
        load_private_key(ec_pem)


def test_small_keys_are_rejected() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = small.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidKey, match=r"too small: 1024-bit .*2048"):
        load_public_key(PUBLIC_PREFIX + _b64(der))
    pkcs8 = small.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidKey, match="too small"):
        load_private_key(PRIVATE_PREFIX + _b64(pkcs8))
    with pytest.raises(InvalidKey, match="too small"):
        generate_keypair(1024)


def test_private_key_errors_do_not_echo_the_input(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, _ = pair
    mangled = private.to_text()[:-10] + "!!!!!!!!!!"  # one bad character class
    with pytest.raises(InvalidKey) as info:
        load_private_key(mangled)
    assert private.to_text()[len(PRIVATE_PREFIX) :][:30] not in str(info.value)
    truncated = private.to_text()[:-40]
    with pytest.raises(InvalidKey, match="not a DER PKCS#8") as info:
        load_private_key(truncated)
    assert truncated[len(PRIVATE_PREFIX) :][:30] not in str(info.value)


def test_encrypted_pem_is_refused_with_a_reason(pair: tuple[PrivateKey, PublicKey]) -> None:
    private, _ = pair
    encrypted = private.rsa.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    with pytest.raises(InvalidKey, match="encrypted PEM is not supported"):
        load_private_key(encrypted)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the dev key pair ----------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_keypair_created_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    before = os.umask(0o022)
    try:
        public, created = ensure_dev_keypair(data_dir)
        assert os.umask(0o022) == 0o022  # our narrowing was undone
    finally:
        os.umask(before)
    assert created
    pub_path, key_path = dev_key_paths(data_dir)
    assert mode(pub_path) == mode(key_path) == 0o600
    assert mode(pub_path.parent) == 0o700
    assert load_public_key(pub_path.read_text()) == public
    assert load_private_key(key_path.read_text()).public == public
    assert public.bits == DEFAULT_BITS
    assert sorted(p.name for p in pub_path.parent.iterdir()) == ["flux-dev.key", "flux-dev.pub"]

    again, created_again = ensure_dev_keypair(data_dir)
    assert again == public and not created_again


def test_dev_public_key_alone_is_used(tmp_path: Path, pair: tuple[PrivateKey, PublicKey]) -> None:
    # Recording needs only the public key: a removed private key is not regenerated.
    _, public = pair
    pub_path, key_path = dev_key_paths(tmp_path)
    pub_path.parent.mkdir(parents=True)
    pub_path.write_text(public.to_text() + "\n")
    assert ensure_dev_keypair(tmp_path) == (public, False)
    assert not key_path.exists()


def test_dev_public_key_rebuilt_from_private(
    tmp_path: Path, pair: tuple[PrivateKey, PublicKey]
) -> None:
    private, public = pair
    pub_path, key_path = dev_key_paths(tmp_path)
    key_path.parent.mkdir(parents=True)
    key_path.write_text(private.to_text())
    assert ensure_dev_keypair(tmp_path) == (public, False)
    assert load_public_key(pub_path.read_text()) == public


def test_dev_keypair_mismatch_and_corruption(
    tmp_path: Path, pair: tuple[PrivateKey, PublicKey], other: PrivateKey
) -> None:
    _, public = pair
    pub_path, key_path = dev_key_paths(tmp_path)
    key_path.parent.mkdir(parents=True)
    pub_path.write_text(public.to_text())
    key_path.write_text(other.to_text())
    with pytest.raises(InvalidKey, match="does not belong to"):
        ensure_dev_keypair(tmp_path)
    key_path.write_text("fluxpriv_v1_garbage")
    with pytest.raises(InvalidKey, match=r"flux-dev\.key: "):
        ensure_dev_keypair(tmp_path)
