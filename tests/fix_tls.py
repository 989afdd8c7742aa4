"""X.509 for the tests: certificate authorities, the server certificates they sign, PEM files.

``make_ca`` makes a self-signed CA (given names, it doubles as a self-signed server
certificate); ``make_leaf`` makes a server certificate a CA signed for DNS names and IP
addresses; ``Issued.write`` puts a certificate, and its key if asked, into PEM files,
the key mode 0600 (PostgreSQL refuses a key file others may read).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# A day back tolerates a clock that differs between the test and the peer checking.
NOT_BEFORE = datetime.timedelta(days=1)
NOT_AFTER = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey

    def write(
        self, cert_path: Path, key_path: Path | None = None, *, traditional: bool = False
    ) -> None:
        """The certificate to ``cert_path``; the key (PKCS#8, or the traditional
        ``BEGIN RSA/EC PRIVATE KEY`` form) to ``key_path`` with mode 0600."""
        cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        if key_path is None:
            return
        key_format = (
            serialization.PrivateFormat.TraditionalOpenSSL
            if traditional
            else serialization.PrivateFormat.PKCS8
        )
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, key_format, serialization.NoEncryption()
        )
        # Created 0600, so the key is never readable by others, not even briefly.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        key_path.chmod(0o600)  # a file that already existed keeps its mode through os.open


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key(use_rsa: bool) -> PrivateKey:
    if use_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: str, key: PrivateKey, issuer: x509.Name, dns: Sequence[str], ips: Sequence[str]
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - NOT_BEFORE)
        .not_valid_after(now + NOT_AFTER)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder


def make_ca(
    common_name: str, *, dns: Sequence[str] = (), ips: Sequence[str] = (), use_rsa: bool = False
) -> Issued:
    """A self-signed CA (P-256, or RSA 2048). With ``dns``/``ips`` it is also a server
    certificate for those names, its own trust anchor."""
    key = _new_key(use_rsa)
    certificate = (
        _builder(common_name, key, _name(common_name), dns, ips)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return Issued(certificate, key)


def make_leaf(ca: Issued, dns: Sequence[str], ips: Sequence[str] = ()) -> Issued:
    """A P-256 server certificate signed by ``ca`` for ``dns`` and ``ips``; its common
    name is the first of them."""
    key = _new_key(False)
    certificate = (
        _builder((*dns, *ips)[0], key, ca.certificate.subject, dns, ips)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)
