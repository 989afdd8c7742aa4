"""The embedded store's tables, in one place.

``SCHEMA_VERSION`` is ``PRAGMA user_version``: a store written by a newer flux is
refused rather than misread. Bump it with any change below, and teach
``SQLiteStore._check_schema`` to upgrade older files.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCHEMA", "SCHEMA_VERSION"]

SCHEMA_VERSION: Final = 1

SCHEMA: Final = f"""
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    trace_id TEXT,
    seq INTEGER NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    kind TEXT NOT NULL,
    conn_id TEXT,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    error INTEGER NOT NULL,
    fingerprint TEXT,
    attrs BLOB NOT NULL,
    payload BLOB NOT NULL,
    key_id TEXT
);
-- Unique: a (trace, seq) collision would mean two writers raced, which must fail loudly.
-- Unattributed rows (NULL trace) are distinct to SQLite, so they are not constrained.
CREATE UNIQUE INDEX events_trace_seq ON events(trace_id, seq);
CREATE INDEX events_start ON events(start_ns);
CREATE INDEX events_kind_fp ON events(kind, fingerprint);
CREATE TABLE executions (
    trace_id TEXT PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    events INTEGER NOT NULL,
    queries INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    root_kind TEXT,
    root_start_ns INTEGER,
    method TEXT,
    path TEXT,
    status INTEGER
) WITHOUT ROWID;
CREATE INDEX executions_start ON executions(start_ns);
-- `flux traces --errors` on a big store should not scan every execution.
CREATE INDEX executions_failed ON executions(start_ns) WHERE errors > 0;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""
