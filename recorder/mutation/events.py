"""Captured rows to mutation events (Debezium's shape: op, key, before, after).

Plaintext ``attrs`` hold what the store needs to index and the CLI to list
without the private key: the table, the op, the key's and the changed columns'
names, the transaction status. The values (before and after images, the key's
values) go in the payload, which is sealed. ``fingerprint`` is the lookup key
for ``flux state history``: a BLAKE2b of the table name and the key's values,
keyed with the store's own secret (:mod:`.lookupkey`), so the store finds a row's
changes by index without holding the values in the clear, and a copy of the store
cannot be searched by trying likely keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from ..model import MUTATION, Event, new_span_id
from .capture import StatementCapture
from .forms import IDENTITY, INSERTED, NEW, OID, OLD, VERSION_NEW, VERSION_OLD
from .identity import TableIdentity, parse_lookup
from .lookupkey import lookup_key


def value_text(value: Any) -> str:
    """A key value as users type it after ``--id``: numbers as written, strings bare."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def pk_digest(table_name: str, key: dict[str, str], secret: bytes | None = None) -> str:
    """The lookup key of one row: its table's name (without schema) and its key values,
    in the order of their column names, keyed with ``secret`` (see :mod:`.lookupkey`)."""
    canonical = "\x1f".join(key[column] for column in sorted(key))
    data = f"{table_name}\x00{canonical}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, key=secret or lookup_key(), digest_size=16).hexdigest()


def _image(value: bytes | None) -> tuple[str | None, dict[str, Any] | None]:
    """The JSON text as captured, and its fields with every number kept as written."""
    if value is None:
        return None, None
    text = value.decode("utf-8", "replace")
    try:
        parsed = json.loads(text, parse_float=str, parse_int=str)
    except ValueError:
        return text, None
    return text, parsed if isinstance(parsed, dict) else None


def mutation_events(
    capture: StatementCapture,
    *,
    conn_id: str,
    start_ns: int,
    query_span: str,
    statement: str | None,
    txn: str,
    secret: bytes,
    trace_id: str | None = None,
) -> list[Event]:
    """One event per captured row; ``attrs["status"]`` is set when the transaction ends."""
    identity = TableIdentity.from_wire(list(capture.identity)) if capture.identity else None
    roles = capture.roles
    if identity is None and IDENTITY in roles and capture.rows:
        identity = parse_lookup(capture.rows[0][roles.index(IDENTITY)])
    if OLD not in roles:
        return []  # the lookup alone: nothing of the rows was captured
    events: list[Event] = []
    for number, row in enumerate(capture.rows):
        before_text, before = _image(row[roles.index(OLD)])
        after_text, after = _image(row[roles.index(NEW)])
        oid = row[roles.index(OID)] if OID in roles else None
        stale = identity is not None and oid is not None and oid != str(identity.oid).encode()
        known = None if stale else identity
        inserted = row[roles.index(INSERTED)] if INSERTED in roles else None
        if after is None and after_text is None:
            op = "delete"
        elif before_text is None:
            # An UPDATE whose locking CTE had no before image for the row (a key rows share,
            # past the byte bound) is still an update; an upsert's row without one was
            # inserted, unless it raced a writer.
            missing = capture.op == "update" and capture.form.startswith("cte-")
            op = "update" if inserted == b"false" or missing else "insert"
        else:
            op = "update"
        image = after if after is not None else before or {}
        columns = known.key if known is not None and known.key else tuple(sorted(image))
        key = {c: value_text(image.get(c)) for c in columns}
        name = known.name if known is not None else capture.relation.rsplit(".", 1)[-1].strip('"')
        table = known.qualified if known is not None else capture.relation
        if op == "update" and before is not None and after is not None:
            changed = sorted(c for c in set(before) | set(after) if before.get(c) != after.get(c))
        else:
            changed = sorted(image)
        attrs: dict[str, Any] = {
            "table": table,
            "op": op,
            "key_columns": list(columns),
            "key_kind": known.key_kind if known is not None else "unknown",
            "changed": changed,
            "txn": txn,
            "row": number,
            "form": capture.form,
        }
        if op == "update" and before_text is None:
            attrs["before_missing"] = True
        if VERSION_OLD in roles:
            # Row-version ids (xmin), not data: they order concurrent writers of one row.
            for attr, role in (("version_before", VERSION_OLD), ("version_after", VERSION_NEW)):
                value = row[roles.index(role)]
                attrs[attr] = None if value is None else value.decode()
        if capture.truncated:
            attrs["truncated"] = True
        payload: dict[str, Any] = {"before": before_text, "after": after_text, "key": key}
        if statement is not None:
            payload["statement"] = statement
        events.append(
            Event(
                kind=MUTATION,
                trace_id=trace_id,
                span_id=new_span_id(),
                parent_span_id=query_span,
                conn_id=conn_id,
                start_ns=start_ns,
                duration_ns=0,
                fingerprint=pk_digest(name, key, secret),
                attrs=attrs,
                payload=payload,
            )
        )
        if op == "update" and before is not None and known is not None and known.key:
            old_key = {c: value_text(before.get(c)) for c in columns}
            if old_key != key:
                # The key changed: the same change is findable under the old key too.
                events.append(
                    replace(
                        events[-1],
                        span_id=new_span_id(),
                        fingerprint=pk_digest(name, old_key, secret),
                        attrs={**attrs, "key_changed": True},
                    )
                )
    return events


def finalize(event: Event, status: str, trace_id: str | None) -> Event:
    """The event as stored: its transaction's outcome, and its trace if one was found since."""
    return replace(
        event, trace_id=event.trace_id or trace_id, attrs={**event.attrs, "status": status}
    )
