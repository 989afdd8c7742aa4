#!/usr/bin/env bash
# The project's test command: `bash scripts/test.sh [pytest args...]`.
# Prepares the machine (scripts/setup.sh), runs pytest, then mypy and ruff.
# The exit code is non-zero if any of the three failed; pytest's "no tests ran"
# (exit 5) counts as a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

status=0

# Two workers (FLUX_TEST_WORKERS), each taking whole test files, so a module's shared
# servers and sidecars stay in one process: most tests wait on servers, not on the CPU,
# and two halve the suite's time on a two-core machine. 0 runs everything in one process.
workers="${FLUX_TEST_WORKERS:-2}"
parallel=()
[[ "$workers" == "0" ]] || parallel=(-n "$workers" --dist loadfile)
pytest_rc=0
.venv/bin/pytest -q --durations=15 "${parallel[@]}" "$@" || pytest_rc=$?
if [[ $pytest_rc -eq 5 ]]; then
    echo "[test] pytest collected no tests: counting that as a failure" >&2
fi
[[ $pytest_rc -eq 0 ]] || status=1

mypy_rc=0
.venv/bin/mypy || mypy_rc=$?
[[ $mypy_rc -eq 0 ]] || status=1

ruff_rc=0
.venv/bin/ruff check . || ruff_rc=$?
[[ $ruff_rc -eq 0 ]] || status=1

echo "[test] pytest=$pytest_rc mypy=$mypy_rc ruff=$ruff_rc" >&2
exit "$status"
