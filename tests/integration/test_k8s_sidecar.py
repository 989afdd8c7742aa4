"""The sidecar as Kubernetes runs it: the mode from the pod's annotations, and SIGTERM.

The annotations file is laid out the way the kubelet's atomic writer does it
(``annotations -> ..data/annotations``, ``..data -> ..<timestamp>``, the
``..data`` link swapped with a rename), so the watcher sees what it would see
in a pod.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess

TOKEN = "tok-k8s-sidecar-test"

Factory = Callable[..., SidecarProcess]


class DownwardApiVolume:
    """A downward-API volume directory, updated like the kubelet updates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.generation = 0
        (root / "annotations").symlink_to("..data/annotations")

    @property
    def path(self) -> Path:
        return self.root / "annotations"

    def write(self, annotations: dict[str, str]) -> None:
        self.generation += 1
        target = self.root / f"..2025_01_01_00_00_{self.generation:02d}.000000001"
        target.mkdir()
        # Go's %q: the same escapes JSON uses for what we put in here.
        lines = [f'{key}="{value}"' for key, value in sorted(annotations.items())]
        (target / "annotations").write_text("\n".join(lines) + "\n")
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.rename(tmp_link, self.root / "..data")


def wait_for_mode(base: str, mode: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = httpx.get(f"{base}/mode", timeout=5).json()["mode"]
        if seen == mode:
            return
        time.sleep(0.1)
    raise AssertionError(f"mode stayed {seen!r}, expected {mode!r}")


def test_annotation_change_switches_the_mode(tmp_path: Path, sidecar_factory: Factory) -> None:
    volume = DownwardApiVolume(tmp_path / "podinfo")
    base_annotations = {
        "flux.dev/inject": "true",
        "kubernetes.io/config.seen": "2025-01-01T00:00:00Z",
    }
    volume.write({**base_annotations, "flux.dev/mode": "passthrough"})
    sidecar = sidecar_factory(
        None,
        "--pod-annotations",
        str(volume.path),
        "--admin-token",
        TOKEN,
        mode="record",
        expect=("admin",),
    )
    base = sidecar.admin_url
    # At start, the annotation wins over --mode (it is what the pod says now).
    assert httpx.get(f"{base}/mode", timeout=5).json()["mode"] == "passthrough"

    volume.write({**base_annotations, "flux.dev/mode": "replay"})  # kubectl annotate … --overwrite
    wait_for_mode(base, "replay")
    samples = metrics(base)
    assert samples['flux_mode{mode="replay"}'] == 1
    assert samples['flux_mode{mode="passthrough"}'] == 0
    assert samples["flux_annotations_mode_changes_total"] == 2
    assert "mode passthrough -> replay (annotation flux.dev/mode)" in sidecar.stderr()

    # A value that is no mode is ignored, logged and counted; the mode stays.
    volume.write({**base_annotations, "flux.dev/mode": "sometimes"})
    deadline = time.monotonic() + 20
    while metrics(base).get("flux_annotations_invalid_mode_total", 0) < 1:
        assert time.monotonic() < deadline, "the invalid annotation was never read"
        time.sleep(0.1)
    assert httpx.get(f"{base}/mode", timeout=5).json()["mode"] == "replay"
    assert "ignoring flux.dev/mode='sometimes'" in sidecar.stderr()

    # A switch through the admin API is not undone by an unrelated annotation change...
    assert (
        httpx.post(
            f"{base}/mode",
            json={"mode": "record"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        ).status_code
        == 200
    )
    volume.write({**base_annotations, "flux.dev/mode": "sometimes", "team": "orders"})
    volume.write(
        {**base_annotations, "flux.dev/mode": "passthrough"}
    )  # ...but a new mode is applied
    wait_for_mode(base, "passthrough")
    # The annotation volume going away (pod teardown) is survived.
    for entry in volume.root.iterdir():
        if entry.is_symlink():
            entry.unlink()
    time.sleep(1.0)  # two polls: nothing to assert about time, only that it is still serving
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/mode", timeout=5).json()["mode"] == "passthrough"


def _comment(trace: str) -> str:
    return f"/*traceparent='00-{trace}-{secrets.token_hex(8)}-01'*/"


@pytest.mark.parametrize("pg", ["15"], indirect=True)
def test_sigterm_during_traffic_loses_no_acknowledged_event(
    pg_db: PgServer, sidecar_factory: Factory
) -> None:
    sidecar = sidecar_factory(pg_db, "--shutdown-grace", "30", expect=("pg", "admin"))
    base = sidecar.admin_url
    acked: list[str] = []  # trace ids of queries whose result the client has received
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10) as conn:
                while not stop.is_set():
                    trace = secrets.token_hex(16)
                    row = conn.execute(f"SELECT %s::text {_comment(trace)}", (trace,)).fetchone()
                    assert row == (trace,)
                    with lock:
                        acked.append(trace)
        except BaseException as exc:  # reported below: a client must never lose its session
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()

    def wait_acked(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(acked) < count:
            assert not errors, errors
            assert time.monotonic() < deadline, f"only {len(acked)} queries answered"
            time.sleep(0.01)

    wait_acked(200)
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    sidecar.proc.send_signal(signal.SIGTERM)

    # Not ready any more (the Service stops sending), still alive (not restarted)...
    deadline = time.monotonic() + 10
    while (ready := httpx.get(f"{base}/readyz", timeout=5)).status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ready.status_code == 503 and "shutting down" in ready.text
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    # ...no new connections (the listener closes right after readiness goes false)...
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(sidecar.dsn(), connect_timeout=5).close()
        except psycopg.OperationalError:
            break
        assert time.monotonic() < deadline, "the sidecar still accepts connections"
        time.sleep(0.05)
    # ...while the open sessions go on through the grace period.
    after_sigterm = len(acked)
    wait_acked(after_sigterm + 100)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    # The last client leaving ends the grace early; the recorder is flushed, then exit 0.
    assert sidecar.proc.wait(60) == 0

    stats = sidecar.stats()
    assert stats.get("events.dropped", 0) == 0
    listed = sidecar.flux_json("traces", "--limit", str(len(acked) + 100))
    stored = {row["trace_id"] for row in listed}
    missing = [trace for trace in acked if trace not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged queries were not stored"
