#!/usr/bin/env bash
# The README's first command: set up the machine, then record a failing request through
# the sidecar, fix the bug, and prove the fix by replaying the request (examples/demo.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
