"""Which keys the commands use, and how sealed payloads are shown: no sockets, no processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux_proxy import render
from flux_proxy.cmd_read import report_unopened
from flux_proxy.keysetup import (
    KeySetupError,
    private_keys,
    reader_sealer,
    recording_keys,
    replay_gap,
)
from recorder.keys import PrivateKey, generate_keypair
from recorder.model import PG_QUERY, Event, StoredEvent
from recorder.store import SEALED_MARKER, UNREADABLE_MARKER


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_keypair(2048)[0]


def test_configured_keys_win_and_bad_ones_say_why(key: PrivateKey, tmp_path: Path) -> None:
    keys = recording_keys(
        public_key=key.public.to_text(), data_dir=tmp_path, require_key=True, no_encrypt=False
    )
    assert keys.source == "configured" and keys.texts == [key.public.to_text()]
    assert not (tmp_path / "keys").exists()
    with pytest.raises(KeySetupError, match=r"FLUX_PUBLIC_KEY.*private key"):
        recording_keys(public_key=key.to_text(), data_dir=tmp_path, require_key=False,
                       no_encrypt=False)  # fmt: skip


def test_require_key_and_no_encrypt(tmp_path: Path) -> None:
    with pytest.raises(KeySetupError, match="--require-key needs --public-key"):
        recording_keys(public_key=None, data_dir=tmp_path, require_key=True, no_encrypt=False)
    with pytest.raises(KeySetupError, match="contradicts"):
        recording_keys(public_key=None, data_dir=tmp_path, require_key=True, no_encrypt=True)
    plain = recording_keys(public_key=None, data_dir=tmp_path, require_key=False, no_encrypt=True)
    assert plain.texts is None and "UNSAFE" in plain.describe()
    assert not (tmp_path / "keys").exists()


def test_dev_pair_is_created_once_and_read_back(tmp_path: Path) -> None:
    first = recording_keys(public_key="", data_dir=tmp_path, require_key=False, no_encrypt=False)
    again = recording_keys(public_key=None, data_dir=tmp_path, require_key=False, no_encrypt=False)
    assert (first.source, again.source) == ("dev-created", "dev")
    assert first.public_keys == again.public_keys
    assert "DEVELOPMENT key pair" in first.describe() and "--require-key" in first.describe()
    reader = reader_sealer([], tmp_path)  # nothing given: the dev key
    assert reader.private_key_ids == [first.public_keys[0].key_id]
    assert replay_gap(first, reader) is None
    assert "replay cannot open" in (replay_gap(first, reader_sealer([], None)) or "")


def test_given_private_keys_replace_the_dev_key(key: PrivateKey, tmp_path: Path) -> None:
    recording_keys(public_key=None, data_dir=tmp_path, require_key=False, no_encrypt=False)
    key_file = tmp_path / "old.key"
    key_file.write_text(key.to_text())
    assert [k.key_id for k in private_keys([f"@{key_file}"], tmp_path)] == [key.key_id]
    assert [k.key_id for k in private_keys([key.to_text(), key.to_text()], None)] == [key.key_id]
    with pytest.raises(KeySetupError, match="cannot read the key file"):
        private_keys([f"@{tmp_path / 'missing'}"], tmp_path)
    mangled = key.to_text()[:-10] + "!!!!!!!!!!"
    with pytest.raises(KeySetupError) as error:
        private_keys([mangled], tmp_path)
    assert "private key #1" in str(error.value) and mangled[20:60] not in str(error.value)


def stored(payload: dict[str, object], seq: int = 1) -> StoredEvent:
    event = Event(kind=PG_QUERY, trace_id="a" * 32, span_id="b" * 16, parent_span_id=None,
                  conn_id=None, start_ns=0, duration_ns=0, payload=payload)  # fmt: skip
    return StoredEvent(id=seq, seq=seq, event=event)


def test_payload_display() -> None:
    assert render.payload_text({SEALED_MARKER: "k1"}) == "[encrypted]"
    assert render.payload_text({UNREADABLE_MARKER: "failed"}) == "[unreadable] failed"
    text = render.payload_text(
        {"sql": ["SELECT $1"], "params": [["v", b"\x00\x01"]], "frontend": b"raw" * 100}
    )
    assert text == 'sql: SELECT $1  params: [["v", "<2 bytes>"]]'
    assert render.payload_text({"body": "x" * 500}).endswith("...")


def test_trace_json_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    events = [stored({"sql": ["SELECT 1"]}), stored({SEALED_MARKER: "k1"}, 2),
              stored({UNREADABLE_MARKER: "failed authentication"}, 3)]  # fmt: skip
    render.trace("a" * 32, events, "json")
    shown = json.loads(capsys.readouterr().out)["events"]
    assert [e["payload"] for e in shown] == [{"sql": ["SELECT 1"]}, "[encrypted]", "[unreadable]"]
    assert shown[1]["payload_key_id"] == "k1" and shown[2]["payload_error"]
    assert report_unopened(events[:2], keys_given=None) == 0  # no key: the normal view
    assert "show as [encrypted]" in capsys.readouterr().err
    assert report_unopened(events[:2], keys_given=["k2"]) == 1  # keys given, none fits
    assert "(key id k2)" in capsys.readouterr().err
    assert report_unopened(events, keys_given=None) == 1  # damage is always an error
    assert "event #3 (pg.query, span " + "b" * 16 + ")" in capsys.readouterr().err
