"""``flux replay``, ``flux incident replay`` and ``flux resume``: re-run recorded requests.

Replay sends a recorded request to the app again through a running sidecar
switched to replay mode: every query and call is answered from the recording, no
upstream is touched. Resume re-runs it live, in record mode, as a new execution.
Both reach the sidecar through its admin API (``--admin``, FLUX_ADMIN_URL) and
read the recording from the store (``--data-dir``/``--store``) with the private key.

Exit codes of ``flux replay``: 0 same or fixed, 1 regressed or differs, 2 not replayed.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from protocols.traceparent import new_traceparent
from recorder.abc import Store
from recorder.model import HTTP_INBOUND, new_trace_id
from recorder.replaycompare import EXIT_NOT_REPLAYED
from recorder.replaypaths import IgnorePath

from . import replayrender
from .cmd_admin import add_admin_flags
from .cmd_read import open_from_args, reader_from_args
from .config import add_private_key_flag, add_store_flags, env
from .keysetup import KeySetupError
from .recordedrequest import ReplayError, load_recorded
from .replayrun import (
    DEFAULT_TIMEOUT,
    RESUMED_HEADER,
    Admin,
    ReplayResult,
    ReplaySession,
    send,
)

_RELATIVE = re.compile(r"-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)", re.I)
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
INCIDENT_LIMIT = 1000


def _ignore(text: str) -> IgnorePath:
    try:
        return IgnorePath(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(parser: argparse.ArgumentParser) -> None:
    add_store_flags(parser)
    add_private_key_flag(parser)
    add_admin_flags(parser)
    parser.add_argument(
        "--inbound",
        default=env("FLUX_INBOUND_URL"),
        help="where to send the request, if not where the sidecar's /info says its inbound "
        "listener is (FLUX_INBOUND_URL; for a port-forward, say)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the app"
    )
    parser.add_argument("--output", "-o", choices=["text", "json"], default="text")


def _replay_flags(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument(
        "--ignore",
        action="append",
        type=_ignore,
        default=[],
        metavar="PATH",
        help="a difference not to count: $.items[*].id, $..updated_at, header:etag (repeatable)",
    )
    parser.add_argument(
        "--stay", action="store_true", help="leave the sidecar in replay mode afterwards"
    )


def register(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="re-run a recorded request against the app, all IO from the recording",
        description="Switches the sidecar to replay scoped to the trace, sends the recorded "
        "request to the app through the inbound proxy, and compares the new response with "
        "the recorded one. Exit 0: same or fixed; 1: regressed or differs; 2: not replayed.",
    )
    replay.add_argument("trace_id", help="trace id, or a unique prefix of at least 6 hex digits")
    _replay_flags(replay)
    replay.set_defaults(handler=run_replay)

    incident = commands.add_parser("incident", help="work on every execution of a time window")
    actions = incident.add_subparsers(dest="incident_command", required=True, metavar="ACTION")
    window = actions.add_parser(
        "replay",
        help="replay every recorded request of a time window",
        description="FROM..TO: HH:MM[:SS] (today, local time), ISO 8601 date-times, "
        "relative times like -15m, -2h, -1d, or now. Prints N/M passing (the new run answers "
        "below 500) and why the others still fail. Exit 0 when all pass, else 1.",
    )
    window.add_argument("window", help="FROM..TO, e.g. 14:00..14:05 or -15m..now")
    window.add_argument("--limit", type=int, default=INCIDENT_LIMIT, help="at most this many")
    _replay_flags(window)
    window.set_defaults(handler=run_incident)

    resume = commands.add_parser(
        "resume",
        help="re-run a recorded request live (real IO) and record it as a new execution",
        description="Switches the sidecar to record mode, sends the recorded request with a "
        f"new trace id (and {RESUMED_HEADER}: <old id>), waits for the new execution to be "
        "recorded, then puts the previous mode back.",
    )
    resume.add_argument("trace_id", help="trace id, or a unique prefix of at least 6 hex digits")
    resume.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    resume.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for the new execution"
    )
    _common(resume)
    resume.set_defaults(handler=run_resume)


# -- time windows ----------------------------------------------------------------------


def parse_moment(text: str, now: datetime) -> datetime:
    """One end of a window; ``now`` is aware, in local time. Naive inputs are local."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if match := _RELATIVE.fullmatch(value):
        return now - timedelta(**{_UNITS[match[2].lower()]: float(match[1])})
    if match := _CLOCK.fullmatch(value):
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        try:
            return now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        except ValueError:
            raise ValueError(f"{text!r} is not a time of day") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r}: expected HH:MM, an ISO 8601 date-time, -15m/-2h/-1d or now"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=now.tzinfo)


def parse_window(text: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    if now is None:
        now = datetime.now().astimezone()
    start_text, sep, end_text = text.partition("..")
    if not sep or not start_text.strip() or not end_text.strip():
        raise ValueError(f"{text!r}: expected FROM..TO, like 14:00..14:05 or -15m..now")
    start, end = parse_moment(start_text, now), parse_moment(end_text, now)
    if end <= start:
        raise ValueError(f"{text!r}: the window ends before it starts")
    return start, end


def window_traces(store: Store, start_ns: int, end_ns: int, limit: int) -> list[str]:
    """Traces with an inbound request started in the window, oldest first."""
    first: dict[str, int] = {}
    for stored in store.events(kind=HTTP_INBOUND, since_ns=start_ns, until_ns=end_ns):
        trace = stored.event.trace_id
        if trace is not None and stored.event.start_ns < first.get(trace, end_ns + 1):
            first[trace] = stored.event.start_ns
    return sorted(first, key=lambda t: (first[t], t))[:limit]


# -- commands --------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Store:
    return open_from_args(args, reader_from_args(args))


def _admin(args: argparse.Namespace) -> Admin:
    return Admin(args.admin, args.admin_token, args.inbound)


def _fail(message: str) -> int:
    print(f"flux: could not replay: {message}", file=sys.stderr)
    return EXIT_NOT_REPLAYED


def run_replay(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
    except KeySetupError as exc:
        return _fail(str(exc))
    try:
        with ReplaySession(_admin(args), stay=args.stay, timeout=args.timeout) as session:
            result = session.replay(store, args.trace_id, args.ignore)
    except ReplayError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    return replayrender.result(result, args.output)


def run_incident(args: argparse.Namespace) -> int:
    try:
        start, end = parse_window(args.window)
    except ValueError as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return EXIT_NOT_REPLAYED
    shown = f"{start.isoformat(timespec='seconds')}..{end.isoformat(timespec='seconds')}"
    try:
        store = _open(args)
    except KeySetupError as exc:
        return _fail(str(exc))
    results: list[ReplayResult] = []
    skipped: list[tuple[str, str]] = []
    try:
        traces = window_traces(
            store, int(start.timestamp() * 1e9), int(end.timestamp() * 1e9), args.limit
        )
        if not traces:
            return _fail(f"no recorded request in {shown}")
        with ReplaySession(_admin(args), stay=args.stay, timeout=args.timeout) as session:
            for trace in replayrender.progress(traces, "replaying", args.output):
                try:
                    results.append(session.replay(store, trace, args.ignore))
                except ReplayError as exc:
                    if exc.fatal:
                        raise
                    skipped.append((trace, str(exc)))
    except ReplayError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    return replayrender.incident(shown, results, skipped, args.output)


def _confirmed(args: argparse.Namespace, what: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print(
            "flux: resume re-runs the request for real (database writes, calls to other "
            "services) and asks first; without a terminal to ask on, pass --yes",
            file=sys.stderr,
        )
        return False
    answer = input(f"Re-run {what} live against the app, with real IO? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run_resume(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
    except KeySetupError as exc:
        print(f"flux: {exc}", file=sys.stderr)
        return EXIT_NOT_REPLAYED
    admin = _admin(args)
    try:
        request = load_recorded(store, args.trace_id)
        if not _confirmed(args, f"{request.method} {request.path} (trace {request.trace_id})"):
            return EXIT_NOT_REPLAYED
        info = admin.info()
        previous, address = str(info.get("mode")), admin.inbound(info)
        trace = new_trace_id()
        headers = [
            ("traceparent", new_traceparent(trace_id=trace).format()),
            (RESUMED_HEADER, request.trace_id),
        ]
        if previous != "record":
            admin.set_mode("record")
        try:
            response, elapsed = send(address, request, headers, args.timeout)
        finally:
            if previous != "record":
                admin.set_mode(previous)
        if args.output != "json":
            print(f"resumed {request.trace_id} as new trace {trace}", flush=True)
        recorded = _wait_for_inbound(store, trace, args.wait)
    except ReplayError as exc:
        print(f"flux: could not resume: {exc}", file=sys.stderr)
        return EXIT_NOT_REPLAYED
    finally:
        store.close()
    return replayrender.resumed(request, trace, response, elapsed, recorded, args.output)


def _wait_for_inbound(store: Store, trace: str, wait: float) -> dict[str, Any] | None:
    """The new execution's summary once its inbound request is in the store."""
    deadline = time.monotonic() + wait
    while True:
        events = [s.event for s in store.events(trace_id=trace)]
        inbound = [e for e in events if e.kind == HTTP_INBOUND]
        if inbound:
            return {
                "status": inbound[0].attrs.get("status"),
                "duration_ms": inbound[0].duration_ns / 1e6,
                "events": len(events),
                "queries": sum(1 for e in events if e.kind == "pg.query"),
                "calls": sum(1 for e in events if e.kind == "http.outbound"),
                "errors": sum(1 for e in events if e.error),
            }
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
