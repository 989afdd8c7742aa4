"""Settings: every one has a flag and an environment variable, and a laptop default."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = ".flux"
STORE_FILE = "flux.db"


def parse_hostport(text: str, *, flag: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT`` or ``:PORT`` (127.0.0.1); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{flag} expects HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(slots=True, kw_only=True)
class Settings:
    mode: str = "record"
    upstream_db: str | None = None
    app_url: str | None = None
    upstream_ca: str | None = None
    no_intercept: list[str] = field(default_factory=list)
    body_cap: int = 1 << 20
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    store: str | None = None
    listen_db: tuple[str, int] = ("127.0.0.1", 4432)
    listen_admin: tuple[str, int] = ("127.0.0.1", 4001)
    listen_http: tuple[str, int] = ("127.0.0.1", 4080)
    listen_inbound: tuple[str, int] = ("127.0.0.1", 4000)
    udp: list[str] = field(default_factory=list)
    udp_timeout: float = 5.0
    udp_max_pending: int = 1024
    db_tls_cert: str | None = None
    db_tls_key: str | None = None
    admin_token: str | None = None
    public_key: str | None = None
    private_keys: list[str] = field(default_factory=list)  # for replay; recording never needs it
    require_key: bool = False
    no_encrypt: bool = False
    sensitive_headers: list[str] = field(default_factory=list)
    recorder_buffer: int = 64 << 20
    max_cycle_bytes: int = 1 << 20
    max_message_length: int = 1 << 30
    shutdown_grace: float = 10.0
    pod_annotations: str | None = None
    capture_mutations: bool = True
    otlp_endpoint: str | None = None

    @property
    def store_location(self) -> str:
        return self.store or str(self.data_dir / STORE_FILE)


def env_flag(name: str) -> bool:
    return (env(name) or "").strip().lower() in ("1", "true", "yes", "on")


def add_private_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--private-key",
        action="append",
        metavar="KEY",
        help="private key to open recorded payloads: fluxpriv_v1_..., PEM or @FILE; repeat "
        "it (or separate with commas) to read recordings made before a key rotation "
        "(FLUX_PRIVATE_KEY; default: the development key in the data dir, if any)",
    )


def private_key_values(args: argparse.Namespace) -> list[str]:
    """The flags if given, else FLUX_PRIVATE_KEY: flags replace the variable, not add to it."""
    given: list[str] | None = getattr(args, "private_key", None)
    if given:
        return given
    value = env("FLUX_PRIVATE_KEY")
    return [value] if value else []


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=env("FLUX_DATA_DIR", DEFAULT_DATA_DIR),
        help="directory of the embedded store (FLUX_DATA_DIR, default ./.flux)",
    )
    parser.add_argument(
        "--store",
        default=env("FLUX_STORE"),
        help="store location, overrides --data-dir (FLUX_STORE)",
    )


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    add_store_flags(parser)
    parser.add_argument(
        "--mode",
        default=env("FLUX_MODE", "record"),
        choices=["record", "passthrough", "replay"],
        help="record, replay or passthrough (FLUX_MODE, default record)",
    )
    parser.add_argument(
        "--upstream-db",
        default=env("FLUX_UPSTREAM_DB"),
        help="postgresql:// URL of the real database (FLUX_UPSTREAM_DB)",
    )
    parser.add_argument(
        "--app",
        dest="app_url",
        default=env("FLUX_APP_URL"),
        help="URL of the application behind the inbound proxy (FLUX_APP_URL)",
    )
    parser.add_argument(
        "--upstream-ca",
        default=env("FLUX_UPSTREAM_CA"),
        help="PEM bundle trusted for upstream HTTPS besides the system store (FLUX_UPSTREAM_CA)",
    )
    parser.add_argument(
        "--no-intercept",
        action="append",
        default=[env("FLUX_NO_INTERCEPT", "")],
        help="hosts tunnelled through the HTTPS proxy without interception, NO_PROXY style "
        "(example.com, .example.com, 10.0.0.0/8, host:443, *); repeatable or comma-separated "
        "(FLUX_NO_INTERCEPT)",
    )
    parser.add_argument(
        "--body-cap",
        type=int,
        default=int(env("FLUX_BODY_CAP", str(1 << 20)) or 0),
        help="bytes of each HTTP body recorded; the rest is forwarded and counted "
        "(FLUX_BODY_CAP, default 1 MiB)",
    )
    for name, default in (("db", "4432"), ("admin", "4001"), ("http", "4080"), ("inbound", "4000")):
        var = f"FLUX_LISTEN_{name.upper()}"
        parser.add_argument(
            f"--listen-{name}",
            default=env(var, f"127.0.0.1:{default}"),
            help=f"HOST:PORT to listen on ({var}, default 127.0.0.1:{default})",
        )
    parser.add_argument(
        "--udp",
        action="append",
        default=[],
        help="LISTEN=UPSTREAM[/dns] datagram mapping (repeatable)",
    )
    parser.add_argument(
        "--udp-timeout",
        type=float,
        default=float(env("FLUX_UDP_TIMEOUT", "5") or 0),
        help="seconds a datagram waits for its answer before it is recorded as a timeout "
        "(FLUX_UDP_TIMEOUT, default 5)",
    )
    parser.add_argument(
        "--udp-max-pending",
        type=int,
        default=int(env("FLUX_UDP_MAX_PENDING", "1024") or 0),
        help="requests awaiting answers (and client sockets) per --udp listener; beyond it "
        "datagrams are not recorded, and counted (FLUX_UDP_MAX_PENDING, default 1024)",
    )
    parser.add_argument(
        "--db-tls-cert",
        default=env("FLUX_DB_TLS_CERT"),
        help="certificate for TLS on the PostgreSQL listener (FLUX_DB_TLS_CERT)",
    )
    parser.add_argument(
        "--db-tls-key",
        default=env("FLUX_DB_TLS_KEY"),
        help="key for TLS on the PostgreSQL listener (FLUX_DB_TLS_KEY)",
    )
    parser.add_argument(
        "--admin-token",
        default=env("FLUX_ADMIN_TOKEN"),
        help="bearer token the admin API requires for changes (FLUX_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--public-key",
        default=env("FLUX_PUBLIC_KEY"),
        help="recipient public key(s) payloads are sealed to, fluxpub_v1_... or PEM, comma "
        "separated (FLUX_PUBLIC_KEY; default: a development pair in the data dir)",
    )
    add_private_key_flag(parser)
    add_capture_flag(parser)
    parser.add_argument(
        "--require-key",
        action="store_true",
        default=env_flag("FLUX_REQUIRE_KEY"),
        help="refuse to start without --public-key instead of using a development key "
        "(FLUX_REQUIRE_KEY=1; the production setting)",
    )
    # Deliberately no environment variable: plaintext recording must be asked for on the
    # command line, where it shows, not inherited from a forgotten variable.
    parser.add_argument(
        "--no-encrypt",
        action="store_true",
        help="UNSAFE: store payloads in plaintext (benchmarks and debugging only)",
    )
    parser.add_argument(
        "--sensitive-header",
        action="append",
        default=[h for h in (env("FLUX_SENSITIVE_HEADERS") or "").split(",") if h.strip()],
        metavar="NAME",
        help="HTTP header whose values are sealed like authorization and cookie (repeatable; "
        "FLUX_SENSITIVE_HEADERS, comma separated)",
    )
    parser.add_argument(
        "--recorder-buffer",
        type=int,
        default=int(env("FLUX_RECORDER_BUFFER", str(64 << 20)) or 0),
        help="bytes waiting for the recorder process; beyond it events are dropped and counted",
    )
    parser.add_argument(
        "--max-cycle-bytes",
        type=int,
        default=int(env("FLUX_MAX_CYCLE_BYTES", str(1 << 20)) or 0),
        help="raw bytes kept per recorded cycle and direction (default 1 MiB)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="seconds open connections get to finish on SIGTERM",
    )
    parser.add_argument(
        "--pod-annotations",
        default=env("FLUX_POD_ANNOTATIONS"),
        help="downward-API file of the pod's annotations; flux.dev/mode in it switches the "
        "mode when it changes (FLUX_POD_ANNOTATIONS)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=env("FLUX_OTLP_ENDPOINT"),
        metavar="URL",
        help="OTLP/HTTP collector to stream spans to, as JSON POSTed to URL/v1/traces "
        "(FLUX_OTLP_ENDPOINT; failures are counted in `flux stats`, never fatal)",
    )


def add_capture_flag(parser: argparse.ArgumentParser) -> None:
    value = (env("FLUX_CAPTURE_MUTATIONS") or "on").strip().lower()
    parser.add_argument(
        "--capture-mutations",
        action=argparse.BooleanOptionalAction,
        default=value not in ("0", "off", "no", "false"),
        help="in record mode, log every row INSERT/UPDATE/DELETE/MERGE change, before and "
        "after (FLUX_CAPTURE_MUTATIONS, default on); off, statements are forwarded exactly "
        "as sent and only recorded",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        mode=args.mode,
        upstream_db=args.upstream_db,
        app_url=args.app_url,
        upstream_ca=args.upstream_ca,
        no_intercept=[v for v in args.no_intercept if v],
        body_cap=args.body_cap,
        data_dir=Path(args.data_dir),
        store=args.store,
        listen_db=parse_hostport(args.listen_db, flag="--listen-db"),
        listen_admin=parse_hostport(args.listen_admin, flag="--listen-admin"),
        listen_http=parse_hostport(args.listen_http, flag="--listen-http"),
        listen_inbound=parse_hostport(args.listen_inbound, flag="--listen-inbound"),
        udp=list(args.udp),
        udp_timeout=args.udp_timeout,
        udp_max_pending=args.udp_max_pending,
        db_tls_cert=args.db_tls_cert,
        db_tls_key=args.db_tls_key,
        admin_token=args.admin_token,
        public_key=args.public_key,
        private_keys=private_key_values(args),
        require_key=args.require_key,
        no_encrypt=args.no_encrypt,
        sensitive_headers=[h.strip().lower() for h in args.sensitive_header if h.strip()],
        recorder_buffer=args.recorder_buffer,
        max_cycle_bytes=args.max_cycle_bytes,
        shutdown_grace=args.shutdown_grace,
        pod_annotations=args.pod_annotations,
        capture_mutations=args.capture_mutations,
        otlp_endpoint=args.otlp_endpoint,
    )
