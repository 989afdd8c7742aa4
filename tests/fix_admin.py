"""Helpers for the admin API and CLI tests: Prometheus text parsing, ``flux`` in-process."""

from __future__ import annotations

import re

import httpx
import pytest

from flux_proxy import cli


def metrics(base: str) -> dict[str, float]:
    """Parses the Prometheus text format: ``name{labels}`` -> value, comments skipped."""
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.e+]+)", line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match[1]] = float(match[2])
    return samples


def flux_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, **env: str
) -> tuple[int, str, str]:
    """``flux ARGS`` in this process (the parser reads the environment when it is built)."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err
