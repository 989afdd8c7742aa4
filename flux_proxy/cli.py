"""The ``flux`` command line: argument parsing and dispatch only.

Each group of commands lives in its own ``cmd_*`` module with a
``register(commands)`` function that adds its subparsers and sets a
``handler``. Read commands open the store read-only and hand what they find
to ``render``; ``serve`` hands its settings to ``sidecar``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from recorder.store import StoreError

from . import (
    cmd_admin,
    cmd_bisect,
    cmd_ca,
    cmd_debug,
    cmd_doctor,
    cmd_export,
    cmd_k8s,
    cmd_keys,
    cmd_read,
    cmd_replay,
    cmd_serve,
    cmd_state,
    cmd_tui,
)
from .keysetup import KeySetupError

COMMAND_MODULES = [cmd_serve, cmd_read, cmd_admin, cmd_k8s, cmd_ca, cmd_keys, cmd_doctor, cmd_state]
COMMAND_MODULES.append(cmd_debug)  # after cmd_read: it adds `trace diff` to `trace`
COMMAND_MODULES.append(cmd_export)
COMMAND_MODULES.append(cmd_tui)  # after cmd_read: it adds `trace debug` to `trace`
COMMAND_MODULES.append(cmd_bisect)
COMMAND_MODULES.append(cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux",
        description="flux-proxy: record, inspect and replay what your service does.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="flux %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.handler(args)
        return result
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except (StoreError, KeySetupError) as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
