"""``flux keys generate`` and ``flux keys show``: the key pair payloads are sealed to."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recorder.keys import DEFAULT_BITS, MIN_BITS, InvalidKey, generate_keypair, load_public_keys

from .config import add_private_key_flag, env, private_key_values
from .keysetup import KeySetupError, private_keys

_ADVICE = (
    "# FLUX_PUBLIC_KEY goes to every sidecar: recording needs nothing else.\n"
    "# FLUX_PRIVATE_KEY opens every recording: keep it in a secret store and give it only\n"
    "# to what shows or replays values (flux trace, flux replay). After a rotation keep the\n"
    "# old private key too (FLUX_PRIVATE_KEY=new,old) so older recordings stay readable."
)


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="generate and inspect encryption keys")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    generate = sub.add_parser(
        "generate", help="print a new key pair as FLUX_PUBLIC_KEY=... and FLUX_PRIVATE_KEY=..."
    )
    generate.add_argument(
        "--bits", type=int, default=DEFAULT_BITS, help=f"RSA modulus size (default {DEFAULT_BITS})"
    )
    generate.add_argument("--output", "-o", choices=["text", "json"], default="text")
    generate.set_defaults(handler=run_generate)

    show = sub.add_parser("show", help="key ids of the configured keys, and whether they match")
    show.add_argument("--public-key", default=env("FLUX_PUBLIC_KEY"), help="(FLUX_PUBLIC_KEY)")
    add_private_key_flag(show)
    show.add_argument(
        "--data-dir",
        default=env("FLUX_DATA_DIR", ".flux"),
        help="where the development key pair lives (FLUX_DATA_DIR)",
    )
    show.add_argument("--output", "-o", choices=["text", "json"], default="text")
    show.set_defaults(handler=run_show)


def run_generate(args: argparse.Namespace) -> int:
    if args.bits < MIN_BITS:
        print(f"flux: --bits must be at least {MIN_BITS}", file=sys.stderr)
        return 2
    private, public = generate_keypair(args.bits)
    if args.output == "json":
        json.dump(
            {
                "key_id": public.key_id,
                "public_key": public.to_text(),
                "private_key": private.to_text(),
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    print(f"FLUX_PUBLIC_KEY={public.to_text()}")
    print(f"FLUX_PRIVATE_KEY={private.to_text()}")
    print(f"# key id {public.key_id}, RSA {public.bits} bits\n{_ADVICE}", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Key ids only: never prints a private key."""
    rows: list[dict[str, Any]] = []
    try:
        if args.public_key:
            for key in load_public_keys(args.public_key):
                rows.append({"kind": "public", "key_id": key.key_id, "bits": key.bits})
        given = private_key_values(args)
        for private in private_keys(given, Path(args.data_dir)):
            source = "given" if given else "development key"
            rows.append(
                {"kind": "private", "key_id": private.key_id, "bits": private.bits, "from": source}
            )
    except (InvalidKey, KeySetupError) as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return 2
    public_ids = {r["key_id"] for r in rows if r["kind"] == "public"}
    for row in rows:
        if row["kind"] == "private" and public_ids:
            row["matches_public_key"] = row["key_id"] in public_ids
    if args.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no keys configured (FLUX_PUBLIC_KEY, FLUX_PRIVATE_KEY) and no development key")
    for row in rows:
        extra = ""
        if "matches_public_key" in row:
            extra = "  (pairs with the public key)" if row["matches_public_key"] else ""
        origin = f" [{row['from']}]" if "from" in row else ""
        print(f"{row['kind']:<8} {row['key_id']}  RSA {row['bits']}{origin}{extra}")
    return 0
