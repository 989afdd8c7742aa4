"""The admin API of a running sidecar: probes, metrics, the token, and ``flux mode``."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import psycopg
import pytest

from tests.fix_admin import flux_cli, metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess, run_flux

TOKEN = "tok-4f1c2a9be07d43d1a6c5"

Factory = Callable[..., SidecarProcess]


def post_mode(
    base: str, body: object, token: str | None = None, *, raw: bytes | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}".strip()} if token is not None else {}
    if raw is not None:
        return httpx.post(f"{base}/mode", content=raw, headers=headers, timeout=10)
    return httpx.post(f"{base}/mode", json=body, headers=headers, timeout=10)


def test_reads_need_no_token_and_changes_are_refused_without_one(
    sidecar_factory: Factory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sidecar = sidecar_factory(None, expect=("admin",), env={"FLUX_ADMIN_TOKEN": ""})
    base = sidecar.admin_url
    # What the image's HEALTHCHECK runs.
    assert flux_cli(capsys, monkeypatch, "health", "--admin", base) == (0, "ok", "")
    assert flux_cli(capsys, monkeypatch, "health", "--ready", FLUX_ADMIN_URL=base) == (
        0,
        "ready",
        "",
    )
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert httpx.get(f"{base}/mode", timeout=10).json() == {"mode": "record", "epoch": 0}

    refused = post_mode(base, {"mode": "replay"}, token="anything")
    assert refused.status_code == 403
    assert "no token configured" in refused.json()["error"]
    assert post_mode(base, {"mode": "replay"}).status_code == 403
    assert httpx.get(f"{base}/mode", timeout=10).json()["mode"] == "record"

    samples = metrics(base)
    assert samples['flux_mode{mode="record"}'] == 1
    assert samples['flux_mode{mode="replay"}'] == 0
    assert samples['flux_mode{mode="passthrough"}'] == 0
    assert samples["flux_ready"] == 1
    assert samples["flux_events_submitted_total"] == 0
    assert samples["flux_events_dropped_total"] == 0
    assert samples['flux_open_connections{listener="pg"}'] == 0

    assert httpx.get(f"{base}/nowhere", timeout=10).status_code == 404
    assert httpx.delete(f"{base}/mode", timeout=10).status_code == 405
    assert "no admin token" in sidecar.stderr()
    sidecar.stop()
    code, _, err = flux_cli(capsys, monkeypatch, "health", "--admin", base)
    assert code == 1 and "cannot reach the admin API" in err


def test_token_is_checked_and_modes_validated(
    sidecar_factory: Factory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token from the environment here; test_switch_reaches_open_pg_sessions gives the flag.
    sidecar = sidecar_factory(None, expect=("admin",), env={"FLUX_ADMIN_TOKEN": TOKEN})
    base = sidecar.admin_url
    one_byte_off = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")
    assert len(one_byte_off) == len(TOKEN)
    for token in (None, "", "wrong", one_byte_off, TOKEN + "x", TOKEN[:-1]):
        response = post_mode(base, {"mode": "replay"}, token=token)
        assert response.status_code == 401, (token, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    basic = httpx.post(
        f"{base}/mode",
        json={"mode": "replay"},
        headers={"Authorization": f"Basic {TOKEN}"},
        timeout=10,
    )
    assert basic.status_code == 401
    assert httpx.get(f"{base}/mode", timeout=10).json()["mode"] == "record"

    for body in ({"mode": "fast-forward"}, {"mode": None}, {}, ["replay"], "replay"):
        response = post_mode(base, body, token=TOKEN)
        assert response.status_code == 400, (body, response.text)
        assert "unknown mode" in response.json()["error"]
    assert post_mode(base, None, token=TOKEN, raw=b"{not json").status_code == 400

    switched = post_mode(base, {"mode": "replay"}, token=TOKEN)
    assert switched.status_code == 200
    assert switched.json() == {"mode": "replay", "previous": "record", "changed": True, "epoch": 1}
    again = post_mode(base, {"mode": "replay"}, token=TOKEN).json()
    assert again["changed"] is False and again["epoch"] == 1

    samples = metrics(base)
    assert samples['flux_mode{mode="replay"}'] == 1
    assert samples['flux_mode{mode="record"}'] == 0
    assert samples["flux_mode_switches_total"] == 1
    assert samples["flux_admin_unauthorized_total"] == 7
    assert "mode record -> replay (admin)" in sidecar.stderr()

    # `flux mode`: once as the installed command, the rest in-process (same parser, handler).
    admin = ("--admin", sidecar.admin_url)
    monkeypatch.delenv("FLUX_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FLUX_ADMIN_URL", raising=False)
    assert run_flux("mode", *admin).stdout.strip() == "replay"
    switched = flux_cli(capsys, monkeypatch, "mode", "passthrough", *admin, "--admin-token", TOKEN)
    assert switched[:2] == (0, "mode: replay -> passthrough")
    # The URL and the token from the environment, as a deployment would set them.
    env = {"FLUX_ADMIN_URL": sidecar.admin_url, "FLUX_ADMIN_TOKEN": TOKEN}
    unchanged = flux_cli(capsys, monkeypatch, "mode", "passthrough", **env)
    assert unchanged[:2] == (0, "mode: passthrough (unchanged)")
    code, out, _ = flux_cli(capsys, monkeypatch, "mode", "--output", "json", **env)
    assert code == 0 and json.loads(out) == {"mode": "passthrough", "epoch": 2}

    code, _, err = flux_cli(capsys, monkeypatch, "mode", "replay", *admin, "--admin-token", "nope")
    assert code == 1 and "401" in err and "wrong bearer token" in err
    code, _, err = flux_cli(capsys, monkeypatch, "mode", "replay", *admin)
    assert code == 2 and "needs the admin token" in err
    code, _, err = flux_cli(capsys, monkeypatch, "mode", "rewind", *admin)
    assert code == 2 and "invalid choice" in err
    assert flux_cli(capsys, monkeypatch, "mode", *admin)[1] == "passthrough"

    sidecar.stop()
    code, _, err = flux_cli(capsys, monkeypatch, "mode", *admin)
    assert code == 2 and "cannot reach the admin API" in err


@pytest.mark.parametrize("pg", ["15"], indirect=True)
def test_switch_reaches_open_pg_sessions(pg_db: PgServer, sidecar_factory: Factory) -> None:
    sidecar = sidecar_factory(pg_db, "--admin-token", TOKEN, expect=("pg", "admin"))
    base = sidecar.admin_url
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (v text)")
        conn.execute("INSERT INTO marks VALUES ('recorded')")
        assert metrics(base)['flux_open_connections{listener="pg"}'] == 1
        recorded = sidecar.wait_for_events(3)["events"]

        assert post_mode(base, {"mode": "passthrough"}, token=TOKEN).status_code == 200
        # The same session goes on; what it sends now is forwarded and not recorded.
        for _ in range(5):
            conn.execute("INSERT INTO marks VALUES ('not recorded')")
        assert conn.execute("SELECT count(*) FROM marks").fetchone() == (6,)

        assert post_mode(base, {"mode": "record"}, token=TOKEN).status_code == 200
        # The session notices the switch at its next idle point, the end of this cycle.
        conn.execute("SELECT 1")
        conn.execute(
            "INSERT INTO marks VALUES ('recorded again') /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/"
        )
    stats = sidecar.wait_for(lambda s: s.get("executions", 0) >= 1)
    trace = sidecar.flux_json("trace", "0af7651916cd43dd8448eb211c80319c")
    assert [e["kind"] for e in trace["events"] if e["kind"] == "pg.query"] == ["pg.query"]
    # Five inserts and a count in passthrough, none of them stored.
    assert stats["events"] < recorded + 6
    samples = metrics(base)
    assert samples["flux_mode_switches_total"] == 2
    assert samples["flux_pg_connections_total"] >= 1
    assert samples["flux_events_submitted_total"] >= recorded + 1
