"""``flux mode [MODE]``: read or switch a running sidecar's mode through its admin API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from .config import env
from .state import MODES

DEFAULT_ADMIN_URL = "http://127.0.0.1:4001"
TIMEOUT = 10.0


class AdminError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def register(commands: Any) -> None:
    mode = commands.add_parser(
        "mode",
        help="show or switch a running sidecar's mode",
        description="Without MODE, print the current mode; with MODE, switch to it "
        "(needs the admin token). A switch reaches each open connection at its next idle point.",
    )
    mode.add_argument("mode", nargs="?", choices=MODES, metavar="MODE", help=" | ".join(MODES))
    add_admin_flags(mode)
    mode.add_argument("--output", "-o", choices=["text", "json"], default="text")
    mode.set_defaults(handler=run_mode)

    health = commands.add_parser(
        "health",
        help="exit 0 when the sidecar is alive (or with --ready, ready): for HEALTHCHECK",
    )
    health.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    add_admin_flags(health)
    health.set_defaults(handler=run_health)


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        default=env("FLUX_ADMIN_URL", DEFAULT_ADMIN_URL),
        help=f"admin API of the sidecar (FLUX_ADMIN_URL, default {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument(
        "--admin-token",
        default=env("FLUX_ADMIN_TOKEN"),
        help="bearer token for changes (FLUX_ADMIN_TOKEN)",
    )


def call(
    base: str, method: str, path: str, *, token: str | None = None, body: Any = None
) -> dict[str, Any]:
    url = base.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise AdminError(f"--admin must be an http:// or https:// URL, got {base!r}", 2)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise AdminError(f"the admin API answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the admin API at {base}: {reason}", 2) from exc
    except ValueError as exc:
        raise AdminError(f"the admin API at {base} did not answer JSON", 2) from exc


def run_mode(args: argparse.Namespace) -> int:
    try:
        if args.mode is None:
            answer = call(args.admin, "GET", "/mode")
            text = answer["mode"]
        else:
            if not args.admin_token:
                raise AdminError(
                    "switching the mode needs the admin token: --admin-token or FLUX_ADMIN_TOKEN", 2
                )
            answer = call(
                args.admin, "POST", "/mode", token=args.admin_token, body={"mode": args.mode}
            )
            if answer.get("changed"):
                text = f"mode: {answer['previous']} -> {answer['mode']}"
            else:
                text = f"mode: {answer['mode']} (unchanged)"
    except AdminError as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(answer) if args.output == "json" else text)
    return 0


def run_health(args: argparse.Namespace) -> int:
    path = "/readyz" if args.ready else "/healthz"
    url = args.admin.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            print(response.read().decode(errors="replace").strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(
            f"flux: {path}: {exc.code} {exc.read().decode(errors='replace').strip()}",
            file=sys.stderr,
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"flux: cannot reach the admin API at {args.admin}: {exc}", file=sys.stderr)
    return 1
