"""``flux doctor``: checks a setup end to end and says what to fix.

It takes the same flags and variables as ``flux serve``, so ``flux doctor`` run
where the sidecar runs checks exactly the setup that will start. Each check is
a function returning one :class:`Check`; they only read, except that the store
is opened read-write (which creates nothing if it exists) to prove it is writable.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from recorder.keys import InvalidKey, dev_key_paths, load_public_key, load_public_keys
from recorder.store import StoreError, open_store

from .config import Settings, add_serve_flags, settings_from_args
from .keysetup import GENERATE_HINT, KeySetupError, private_keys
from .upstream import UpstreamTarget

OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "fail"
CONNECT_TIMEOUT: Final = 3.0
MIN_TOKEN: Final = 16
CA_KEY_FILE: Final = "ca/mitmproxy-ca.pem"  # flux_proxy/http/ca.py's layout
CA_CERT_FILE: Final = "ca/mitmproxy-ca-cert.pem"
TRUST_VARIABLES: Final = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


def register(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check keys, store, upstream, CA and admin token; say what to fix"
    )
    add_serve_flags(doctor)
    doctor.add_argument("--output", "-o", choices=["text", "json"], default="text")
    doctor.set_defaults(handler=run)


def _private(path: Path) -> bool:
    return not path.stat().st_mode & 0o077


def check_keys(s: Settings) -> Check:
    if s.no_encrypt:
        return Check(
            "keys",
            FAIL,
            "--no-encrypt: payloads are stored in plaintext",
            "drop --no-encrypt (it is for benchmarks and debugging)",
        )
    if s.public_key:
        try:
            keys = load_public_keys(s.public_key)
        except InvalidKey as exc:
            return Check("keys", FAIL, f"FLUX_PUBLIC_KEY: {exc}", GENERATE_HINT)
        return Check("keys", OK, "payloads sealed to key id " + ", ".join(k.key_id for k in keys))
    if s.require_key:
        return Check(
            "keys",
            FAIL,
            "--require-key is set but no public key is given",
            f"set FLUX_PUBLIC_KEY ({GENERATE_HINT})",
        )
    pub_path, key_path = dev_key_paths(s.data_dir)
    advice = f"for production, {GENERATE_HINT}, set FLUX_PUBLIC_KEY and --require-key"
    if not pub_path.exists():
        return Check(
            "keys",
            WARN,
            f"no public key: `flux serve` will create a development pair in {pub_path.parent}",
            advice,
        )
    try:
        key = load_public_key(pub_path.read_text(encoding="ascii"))
    except (InvalidKey, OSError, UnicodeDecodeError) as exc:
        return Check("keys", FAIL, f"{pub_path}: {exc}", f"remove {pub_path.parent} to start over")
    if key_path.exists() and not _private(key_path):
        return Check("keys", FAIL, f"{key_path} is readable by others", f"chmod 600 {key_path}")
    return Check(
        "keys",
        WARN,
        f"development key pair in {pub_path.parent} (key id "
        f"{key.key_id}): fine on a laptop, not in production",
        advice,
    )


def _public_ids(s: Settings) -> set[str]:
    try:
        if s.public_key:
            return {k.key_id for k in load_public_keys(s.public_key)}
        pub_path = dev_key_paths(s.data_dir)[0]
        if pub_path.exists():
            return {load_public_key(pub_path.read_text(encoding="ascii")).key_id}
    except (InvalidKey, OSError, UnicodeDecodeError):
        pass  # check_keys reports it
    return set()


def check_private_key(s: Settings) -> Check:
    try:
        keys = private_keys(s.private_keys, s.data_dir)
    except KeySetupError as exc:
        return Check("private key", FAIL, str(exc), GENERATE_HINT)
    replay = s.mode == "replay"
    if not keys:
        detail = "none given: recording works; `flux trace` shows [encrypted] values"
        fix = "give FLUX_PRIVATE_KEY to what reads or replays (never needed to record)"
        return Check("private key", FAIL if replay else OK, detail, fix if replay else "")
    ids = {k.key_id for k in keys}
    wanted = _public_ids(s)
    if wanted and not ids & wanted:
        # A private key is given so that something can read; one that opens nothing
        # recorded from now on is a mistake whatever the mode.
        return Check(
            "private key",
            FAIL,
            f"private key id {', '.join(sorted(ids))} does not pair with the public "
            f"key id {', '.join(sorted(wanted))}: it cannot open what is recorded now",
            "give the private key of FLUX_PUBLIC_KEY (old keys may be given too)",
        )
    return Check("private key", OK, "opens key id " + ", ".join(sorted(ids)))


def check_store(s: Settings) -> Check:
    location = s.store_location
    path = Path(location.removeprefix("sqlite://"))
    if location.startswith(("postgresql://", "postgres://")) or path.exists():
        try:
            open_store(location).close()
        except (StoreError, OSError) as exc:
            return Check("store", FAIL, f"{location}: {exc}", "fix the path or its permissions")
        if path.exists() and not _private(path):
            return Check("store", FAIL, f"{path} is readable by others", f"chmod 600 {path}")
        return Check("store", OK, f"{location} is writable")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return Check(
            "store",
            FAIL,
            f"cannot create {path}: {parent} is not writable",
            "choose --data-dir (FLUX_DATA_DIR) where this user can write",
        )
    return Check("store", OK, f"{path} will be created on first start (mode 0600)")


def check_upstream(s: Settings) -> Check:
    if not s.upstream_db:
        return Check(
            "upstream",
            WARN,
            "no --upstream-db: the PostgreSQL listener is off",
            "set FLUX_UPSTREAM_DB=postgresql://host:port/db",
        )
    if s.mode == "replay":
        return Check("upstream", OK, "replay mode never contacts the upstream")
    try:
        target = UpstreamTarget.from_url(s.upstream_db)
    except ValueError as exc:
        return Check("upstream", FAIL, str(exc), "fix FLUX_UPSTREAM_DB")
    try:
        socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        return Check(
            "upstream",
            FAIL,
            f"cannot connect to {target.address}: {exc}",
            "check the host, port, network policy and that PostgreSQL runs",
        )
    return Check("upstream", OK, f"{target.address} accepts connections")


def check_ca(s: Settings) -> Check:
    key, cert = s.data_dir / CA_KEY_FILE, s.data_dir / CA_CERT_FILE
    if not key.exists() or not cert.exists():
        return Check(
            "ca",
            WARN,
            f"no CA in {key.parent} yet (needed to record HTTPS)",
            "run `flux serve` once (it creates the CA), then `flux ca export` and "
            "point SSL_CERT_FILE / NODE_EXTRA_CA_CERTS at it",
        )
    if not _private(key):
        return Check("ca", FAIL, f"{key} is readable by others", f"chmod 600 {key}")
    ours = cert.read_text(errors="replace").strip()
    for variable in TRUST_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_file() and ours in Path(value).read_text(errors="replace"):
            return Check("ca", OK, f"CA present and trusted through {variable}")
    return Check(
        "ca",
        WARN,
        "CA present, but no trust variable here names a file holding it",
        "`flux ca export > flux-ca.pem` and set SSL_CERT_FILE (or REQUESTS_CA_BUNDLE, "
        "NODE_EXTRA_CA_CERTS) in the application to a bundle holding it",
    )


def _exposed(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def check_admin(s: Settings) -> Check:
    host = s.listen_admin[0]
    if not s.admin_token:
        status = FAIL if _exposed(host) else WARN
        return Check(
            "admin token",
            status,
            "no admin token: the admin API refuses every mode "
            f"change{'' if status == WARN else f' and listens on {host}'}",
            "set FLUX_ADMIN_TOKEN to a long random value (openssl rand -hex 32)",
        )
    if len(s.admin_token) < MIN_TOKEN:
        return Check(
            "admin token",
            WARN,
            f"the admin token is short ({len(s.admin_token)} characters)",
            "use 32 random bytes: openssl rand -hex 32",
        )
    return Check("admin token", OK, "set")


def check_listeners(s: Settings) -> Check:
    named = {
        "db": s.listen_db,
        "admin": s.listen_admin,
        "http": s.listen_http,
        "inbound": s.listen_inbound,
    }
    open_to_all = [
        f"--listen-{name} {host}:{port}" for name, (host, port) in named.items() if _exposed(host)
    ]
    if open_to_all:
        return Check(
            "listeners",
            WARN,
            "reachable from other hosts: " + ", ".join(open_to_all),
            "bind to 127.0.0.1 unless other hosts must connect",
        )
    return Check("listeners", OK, "all on loopback")


CHECKS: Final[list[Callable[[Settings], Check]]] = [
    check_keys,
    check_private_key,
    check_store,
    check_upstream,
    check_ca,
    check_admin,
    check_listeners,
]


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    results = [check(settings) for check in CHECKS]
    failed = any(r.status == FAIL for r in results)
    if args.output == "json":
        json.dump({"ok": not failed, "checks": [asdict(r) for r in results]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(f"{r.status.upper():<4}  {r.name:<12} {r.detail}")
            if r.fix and r.status != OK:
                print(f"{'':<6}{'':<12} fix: {r.fix}")
        print("flux doctor: " + ("problems found" if failed else "no problems that stop flux"))
    return 1 if failed else 0
