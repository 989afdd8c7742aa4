"""The downward-API annotations file (Go ``%q`` values) and the admin API's pure helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux_proxy.admin import metric_name, token_matches
from flux_proxy.podinfo import AnnotationWatcher, parse_annotations, unquote_go
from flux_proxy.state import SidecarState

# (what Go's strconv.Quote prints, the string it stands for)
QUOTED = [
    ('"replay"', "replay"),
    ('""', ""),
    ('"say \\"hi\\""', 'say "hi"'),
    ('"C:\\\\dir"', "C:\\dir"),
    ('"line1\\nline2\\ttab"', "line1\nline2\ttab"),
    ('"\\a\\b\\f\\r\\v"', "\a\b\f\r\v"),
    ('"café ☕"', "café ☕"),  # printable runes are left as they are
    ('"\\x00\\x7f"', "\x00\x7f"),
    ('"\\u200b\\U0001f600"', "\u200b\U0001f600"),
    ('"{\\"json\\":[1,2]}"', '{"json":[1,2]}'),
    ('"\\xff"', "\ufffd"),  # a byte that is not UTF-8
]


@pytest.mark.parametrize(("quoted", "text"), QUOTED)
def test_unquote_go(quoted: str, text: str) -> None:
    assert unquote_go(quoted) == text


@pytest.mark.parametrize("bad", ["replay", '"open', '"\\q"', '"\\x4"', '"\\uzzzz"'])
def test_unquote_go_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        unquote_go(bad)


def test_parse_annotations_as_the_kubelet_writes_them() -> None:
    text = (
        'flux.dev/inject="true"\n'
        'flux.dev/mode="replay"\n'
        'kubectl.kubernetes.io/last-applied-configuration="{\\"apiVersion\\":\\"v1\\"}\\n"\n'
        "garbage line\n"
        'broken="\\q"\n'
    )
    assert parse_annotations(text) == {
        "flux.dev/inject": "true",
        "flux.dev/mode": "replay",
        "kubectl.kubernetes.io/last-applied-configuration": '{"apiVersion":"v1"}\n',
    }


def test_watcher_applies_changes_of_the_mode_only(tmp_path: Path) -> None:
    path = tmp_path / "annotations"
    state = SidecarState("record")
    watcher = AnnotationWatcher(path, state)
    watcher.check()  # no file yet: nothing happens
    path.write_text('flux.dev/mode="replay"\n')
    watcher.check()
    assert state.mode == "replay"
    state.set_mode("record", source="admin")
    path.write_text('a="1"\nflux.dev/mode="replay"\n')  # another annotation changed
    watcher.check()
    assert state.mode == "record"
    path.write_text('flux.dev/mode=" passthrough "\n')
    watcher.check()
    assert state.mode == "passthrough"
    path.write_text('flux.dev/mode="fast"\n')
    watcher.check()
    assert state.mode == "passthrough" and state.counters["annotations.invalid_mode"] == 1


def test_token_comparison() -> None:
    assert token_matches("s3cret", "s3cret")
    for wrong in (None, "", "s3cre", "s3crex", "s3cret ", "S3cret"):
        assert not token_matches(wrong, "s3cret")


def test_metric_names() -> None:
    assert metric_name("pg.connections_total") == "flux_pg_connections_total"
    assert metric_name("mode_switches") == "flux_mode_switches_total"
    assert metric_name("udp.dns-timeouts") == "flux_udp_dns_timeouts_total"
