"""In Kubernetes the CA comes from a Secret that the app containers trust too."""

from __future__ import annotations

import datetime
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.fix_http import Origin, Pki
from tests.fix_sidecar import start_sidecar


def make_ca(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cluster flux CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_sidecar_signs_with_the_mounted_ca(tmp_path: Path, test_pki: Pki, origin: Origin) -> None:
    cert_path, key_path = make_ca(tmp_path)
    sidecar = start_sidecar(
        tmp_path / "flux",
        None,
        "--upstream-ca",
        str(test_pki.ca_path),
        expect=("http",),
        env={"FLUX_CA_CERT": str(cert_path), "FLUX_CA_KEY": str(key_path)},
    )
    try:
        assert (
            sidecar.flux("ca", "export").stdout.encode().strip() == cert_path.read_bytes().strip()
        )
        # A client that trusts only the mounted CA accepts what the sidecar presents.
        with requests.Session() as session:
            session.trust_env = False
            proxy = sidecar.url("http")
            response = session.get(
                origin.url("/"), proxies={"https": proxy}, verify=str(cert_path), timeout=20
            )
        assert response.status_code < 500
    finally:
        sidecar.stop()
