"""In Kubernetes the CA comes from a Secret that the app containers trust too."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.fix_http import Origin, Pki
from tests.fix_sidecar import start_sidecar
from tests.fix_tls import make_ca


def mounted_ca(directory: Path) -> tuple[Path, Path]:
    """An RSA CA, its key in PKCS#1 PEM (cert-manager's default for a Secret)."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    make_ca("cluster flux CA", use_rsa=True).write(cert_path, key_path, traditional=True)
    return cert_path, key_path


def test_sidecar_signs_with_the_mounted_ca(tmp_path: Path, test_pki: Pki, origin: Origin) -> None:
    cert_path, key_path = mounted_ca(tmp_path)
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
