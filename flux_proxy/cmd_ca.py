"""``flux ca export``: the certificate clients trust for HTTPS through the sidecar."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .config import DEFAULT_DATA_DIR, env

log = logging.getLogger("flux")


def register(commands: Any) -> None:
    ca = commands.add_parser("ca", help="the sidecar's certificate authority for HTTPS")
    actions = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="print the CA certificate (PEM) for SSL_CERT_FILE, REQUESTS_CA_BUNDLE, "
        "NODE_EXTRA_CA_CERTS",
        description="Print the CA certificate the HTTPS proxy signs with. The CA is created "
        "in the data directory if the sidecar has not created it yet, so clients can be "
        "configured before the first start.",
    )
    export.add_argument(
        "--data-dir",
        default=env("FLUX_DATA_DIR", DEFAULT_DATA_DIR),
        help="the sidecar's data directory (FLUX_DATA_DIR, default ./.flux)",
    )
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .http.ca import CaError, ca_certificate, ensure_ca

    data_dir = Path(args.data_dir)
    try:
        directory, created = ensure_ca(data_dir)
        pem = ca_certificate(data_dir)
    except (CaError, OSError) as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return 2
    if created:
        log.info("created a new CA in %s (its key is readable by this user only)", directory)
    sys.stdout.write(pem.decode("ascii"))
    return 0
