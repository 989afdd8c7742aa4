"""The README's first command, end to end: ``bash scripts/demo.sh``.

It records four requests of the example order service through the sidecar (one fails on
a bug), shows them, stops PostgreSQL and the payment API, restarts the service patched,
and replays the failed request. The output must show all of it, the verdict ``fixed``
with exit 0, and nothing may be left running.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.fix_app import accepting
from tests.fix_sidecar import REPO

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def test_demo_records_the_failure_and_replays_the_fix(tmp_path: Path) -> None:
    env = {**os.environ, "FLUX_DEMO_DIR": str(tmp_path / "demo"), "COLUMNS": "150"}
    env.pop("FLUX_ADMIN_TOKEN", None)
    result = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"

    # The four requests, each with its trace, and the one that failed.
    sent = re.findall(r"^  (POST|GET) +(/\S+).*?→ (\d{3})  trace ([0-9a-f]{8})", out, re.M)
    assert [(m, p, s) for m, p, s, _ in sent] == [
        ("POST", "/orders", "201"),
        ("GET", "/orders/1", "200"),
        ("POST", "/orders", "201"),
        ("POST", "/orders", "500"),
    ]
    failed = sent[-1][3]

    # flux traces lists all four, the failed one first (newest) with its error.
    table = out.split("$ flux traces", 1)[1].split("$ flux trace ", 1)[0]
    rows = re.findall(
        r"^│ ([0-9a-f]{32}) .*?│ (\w+ \S+ → \d{3}) *│ (\d+) *│ (\d+) *│ (\d+)", table, re.M
    )
    assert {row[0][:8] for row in rows} == {short for *_, short in sent}
    assert rows[0][0].startswith(failed)
    assert rows[0][1:] == ("POST /orders → 500", "9", "1", "1")

    # flux trace of the failure: the queries, the payment call, the 500.
    trace = out.split("$ flux trace ", 1)[1].split("\n$ flux ", 1)[0]
    assert trace.startswith(failed)
    assert "POST /orders → 500" in trace
    assert "INSERT INTO orders" in trace
    assert re.search(r"POST https://127\.0\.0\.1:\d+/v1/charges → 200", trace)
    assert "UPDATE orders SET status" in trace
    if "$ flux why" in out:
        why = out.split("$ flux why", 1)[1].split("the shop's log", 1)[0]
        assert "failed first" in why and "POST /orders → 500" in why
    assert "KeyError: 'receipt_url'" in out

    # The replay against the fixed app, with the upstreams gone.
    assert "PostgreSQL stopped, payment API stopped" in out
    replay = out.split("$ flux replay", 1)[1]
    assert re.search(r"^fixed +recorded 500 .*→ now 202", replay, re.M), replay
    assert re.search(r'\$\.next_action_url +added "?https://payments\.example/3ds/ch_', replay)
    assert re.search(r"(\d+) answer\(s\) from recordings, 0 miss\(es\)", replay)
    assert "flux replay exited 0" in out

    # Nothing is left running: the fixed shop and the sidecar are gone.
    shop = re.search(r"the fixed shop runs from .* on 127\.0\.0\.1:(\d+)", out)
    assert shop is not None
    shop_port = int(shop[1])
    ports = re.search(r"sidecar \(record\) +postgres (\d+), https proxy (\d+), "
                      r"inbound (\d+), admin (\d+)", out)  # fmt: skip
    assert ports is not None
    for port in (shop_port, *map(int, ports.groups())):
        assert not accepting(port), port
