"""``flux serve``."""

from __future__ import annotations

import argparse
from typing import Any

from .config import add_serve_flags, settings_from_args


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the sidecar")
    add_serve_flags(serve)
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .sidecar import serve  # the event loop and listeners load only for this command

    return serve(settings_from_args(args))
