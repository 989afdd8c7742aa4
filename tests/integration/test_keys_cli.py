"""Key management from the command line: ``flux keys``, the development pair,
``--require-key`` and ``flux doctor``."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psycopg

from recorder.keys import load_private_key, load_public_key
from tests.fix_pg import PgServer, free_port
from tests.fix_sidecar import run_flux, start_sidecar

NO_KEYS = {"FLUX_PUBLIC_KEY": "", "FLUX_PRIVATE_KEY": "", "FLUX_REQUIRE_KEY": ""}
TOKEN = "0123456789abcdef0123456789abcdef"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def generate() -> tuple[str, str]:
    result = run_flux("keys", "generate")
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout  # the advice goes to stderr, not into an env file
    public, private = lines
    assert public.startswith("FLUX_PUBLIC_KEY=fluxpub_v1_")
    assert private.startswith("FLUX_PRIVATE_KEY=fluxpriv_v1_")
    return public.split("=", 1)[1], private.split("=", 1)[1]


def test_generate_prints_a_matching_pair_on_single_lines() -> None:
    public, private = generate()
    assert load_private_key(private).public == load_public_key(public)
    assert "keep it in a secret store" in run_flux("keys", "generate").stderr
    shown = run_flux("keys", "show", env={"FLUX_PUBLIC_KEY": public, "FLUX_PRIVATE_KEY": private})
    key_id = load_public_key(public).key_id
    assert f"public   {key_id}" in shown.stdout and "pairs with the public key" in shown.stdout
    assert "fluxpriv" not in shown.stdout


def test_dev_key_pair_on_a_laptop(pg15: PgServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "flux"
    sidecar = start_sidecar(data_dir, pg15, env=NO_KEYS, seed_key=False)
    try:
        trace = "c3" * 16
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            conn.execute(
                f"SELECT %s::text /*traceparent='00-{trace}-00f067aa0ba902b7-01'*/", ("v",)
            )
        sidecar.wait_for(lambda s: s.get("executions", 0) >= 1)
        shown = run_flux("trace", trace, "--data-dir", str(data_dir), "-o", "json", env=NO_KEYS)
    finally:
        sidecar.stop()
    assert "created a DEVELOPMENT key pair" in sidecar.stderr()
    keys = data_dir / "keys"
    assert mode(keys) == 0o700
    # lookup.key: the store's own secret for mutation row look-ups (keyed digests).
    assert {p.name: mode(p) for p in keys.iterdir()} == {
        "flux-dev.pub": 0o600,
        "flux-dev.key": 0o600,
        "lookup.key": 0o600,
    }
    assert mode(data_dir / "flux.db") == 0o600
    # Nothing configured, and `flux trace` still shows values: it finds the dev key.
    assert json.loads(shown.stdout)["events"][0]["payload"]["params"] == [["v"]]


def test_require_key_refuses_to_start_without_a_public_key(tmp_path: Path) -> None:
    for args, env in ((["--require-key"], NO_KEYS), ([], {**NO_KEYS, "FLUX_REQUIRE_KEY": "1"})):
        result = run_flux(
            "serve", "--data-dir", str(tmp_path), "--listen-admin", "127.0.0.1:0", *args,
            check=False, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "--require-key needs --public-key or FLUX_PUBLIC_KEY" in result.stderr
    assert not (tmp_path / "keys").exists()  # no development key was made instead


def doctor(*args: str, env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    result = run_flux("doctor", "-o", "json", *args, check=False, env={**NO_KEYS, **env})
    report = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, {c["name"]: c for c in report["checks"]}


def test_doctor(pg15: PgServer, tmp_path: Path) -> None:
    public, private = generate()
    _, other = generate()
    base = ["--data-dir", str(tmp_path), "--upstream-db", f"postgresql://{pg15.host}:{pg15.port}"]
    status, checks = doctor(
        *base, "--admin-token", TOKEN, env={"FLUX_PUBLIC_KEY": public, "FLUX_PRIVATE_KEY": private}
    )
    assert status == 0, checks
    assert {name: c["status"] for name, c in checks.items()} == {
        "keys": "ok", "private key": "ok", "store": "ok", "upstream": "ok", "ca": "warn",
        "admin token": "ok", "listeners": "ok",
    }  # fmt: skip

    status, checks = doctor(*base, env={"FLUX_PUBLIC_KEY": public, "FLUX_PRIVATE_KEY": other})
    assert status == 1 and checks["private key"]["status"] == "fail"
    assert "does not pair" in checks["private key"]["detail"]
    assert (
        checks["admin token"]["status"] == "warn"
        and "FLUX_ADMIN_TOKEN" in checks["admin token"]["fix"]
    )

    unreachable = f"postgresql://127.0.0.1:{free_port()}/app"
    status, checks = doctor("--data-dir", str(tmp_path), "--upstream-db", unreachable,
                            "--require-key", env={})  # fmt: skip
    assert status == 1
    assert checks["keys"]["status"] == "fail" and "flux keys generate" in checks["keys"]["fix"]
    assert (
        checks["upstream"]["status"] == "fail" and "cannot connect" in checks["upstream"]["detail"]
    )
    text = run_flux(
        "doctor", "--data-dir", str(tmp_path), "--require-key", check=False, env=NO_KEYS
    )
    assert text.returncode == 1 and "FAIL  keys" in text.stdout and "fix:" in text.stdout
