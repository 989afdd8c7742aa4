"""The sidecar's certificate authority, and the trust it places in upstreams.

The CA is created once, in ``<data dir>/ca``, in the file layout mitmproxy's
certificate store reads (``mitmproxy-ca.pem`` holds key and certificate), so
mitmproxy signs its per-host certificates with it. Files holding the key are
mode 0600 in a 0700 directory. ``flux ca export`` prints the certificate that
clients add to their trust (``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``,
``NODE_EXTRA_CA_CERTS``).

Upstream certificates are verified against the system's trust store plus the
bundle given with ``--upstream-ca``. mitmproxy verifies against exactly one
file when given one, so the two are concatenated into ``upstream-trust.pem``
at every start (the system store may have changed since the last one).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Final

from cryptography import x509

CA_DIR: Final = "ca"
BASENAME: Final = "mitmproxy"  # mitmproxy's TlsConfig looks for <confdir>/mitmproxy-ca.pem
CA_KEY_FILE: Final = f"{BASENAME}-ca.pem"
CA_CERT_FILE: Final = f"{BASENAME}-ca-cert.pem"
UPSTREAM_TRUST_FILE: Final = "upstream-trust.pem"
KEY_SIZE: Final = 2048
_PRIVATE_FILES: Final = (CA_KEY_FILE, f"{BASENAME}-ca.p12")


class CaError(Exception):
    """The CA or a trust bundle cannot be used; the message says which file and why."""


def ca_dir(data_dir: Path) -> Path:
    return data_dir / CA_DIR


def ensure_ca(data_dir: Path) -> tuple[Path, bool]:
    """The CA directory, creating the CA if there is none yet; and whether it was created."""
    from mitmproxy.certs import CertStore  # heavy import, only where a CA is made

    directory = ca_dir(data_dir)
    created = False
    mounted = os.environ.get("FLUX_CA_CERT"), os.environ.get("FLUX_CA_KEY")
    if all(mounted):
        _install_mounted_ca(directory, Path(mounted[0] or ""), Path(mounted[1] or ""))
    elif not (directory / CA_KEY_FILE).exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        CertStore.create_store(
            directory, BASENAME, KEY_SIZE, organization="flux-proxy", cn="flux-proxy CA"
        )
        created = True
    # mitmproxy writes keys under a 077 umask; make it so for files an older run or a
    # copy left readable too, since anyone who reads the key can impersonate any host.
    os.chmod(directory, 0o700)
    for name in _PRIVATE_FILES:
        path = directory / name
        if path.exists() and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    return directory, created


def _install_mounted_ca(directory: Path, cert: Path, key: Path) -> None:
    """Uses the CA given by FLUX_CA_CERT/FLUX_CA_KEY (in Kubernetes, the chart's Secret that
    the app containers also trust) instead of one of our own making."""
    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
        x509.load_pem_x509_certificate(cert_pem)
    except (OSError, ValueError) as exc:
        raise CaError(
            f"cannot use the CA from FLUX_CA_CERT={cert} FLUX_CA_KEY={key}: {exc}"
        ) from exc
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        (directory / CA_KEY_FILE).write_bytes(key_pem.rstrip() + b"\n" + cert_pem)
        (directory / CA_CERT_FILE).write_bytes(cert_pem)
    finally:
        os.umask(old_umask)
    # A .p12 left from an earlier CA of our own would no longer match.
    (directory / f"{BASENAME}-ca.p12").unlink(missing_ok=True)


def ca_certificate(data_dir: Path) -> bytes:
    """The CA certificate in PEM, as clients need it."""
    path = ca_dir(data_dir) / CA_CERT_FILE
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read the CA certificate {path}: {exc}") from exc


def _pem_certificates(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read the CA bundle {path}: {exc}") from exc
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaError(f"{path} holds no PEM certificate: {exc}") from exc
    if not found:
        raise CaError(f"{path} holds no PEM certificate")
    return data


def system_bundle() -> Path | None:
    """The trust store OpenSSL uses on this machine (honouring SSL_CERT_FILE), else certifi's."""
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).is_file():
        return Path(cafile)
    try:
        import certifi
    except ImportError:  # pragma: no cover - mitmproxy depends on certifi
        return None
    return Path(certifi.where())


def upstream_trust(data_dir: Path, extra: str | None) -> Path:
    """Writes the system store plus ``extra`` into one bundle and returns its path."""
    parts: list[bytes] = []
    system = system_bundle()
    if system is not None:
        parts.append(system.read_bytes())
    if extra:
        parts.append(_pem_certificates(Path(extra)))
    if not parts:
        raise CaError("no system trust store found; give one with --upstream-ca")
    directory = ca_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / UPSTREAM_TRUST_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_bytes(b"\n".join(p.rstrip(b"\n") + b"\n" for p in parts))
    temporary.replace(target)  # a concurrent start never reads half a bundle
    return target
