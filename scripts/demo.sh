#!/usr/bin/env bash
# The README's first command: set up the machine, then record and inspect a few requests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python examples/demo_pg.py "$@"
