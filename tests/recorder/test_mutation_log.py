"""The recorder's side of the mutation log: transaction outcomes and mutation events."""

from __future__ import annotations

import json

import pytest

from recorder.mutation.capture import StatementCapture
from recorder.mutation.events import mutation_events, pk_digest
from recorder.mutation.identity import TableIdentity
from recorder.mutation.txn import Outcome, Rows, TxnTracker, savepoint_name

Step = Rows[str] | Outcome


def run(tracker: TxnTracker[str], before: str, after: str, *steps: Step) -> list[tuple[str, str]]:
    return tracker.apply(list(steps), status_before=before, status_after=after)


def test_autocommit_and_implicit_transactions() -> None:
    t: TxnTracker[str] = TxnTracker()
    assert run(t, "I", "I", Rows(["a"]), Outcome("UPDATE 1")) == [("a", "committed")]
    # Two statements in one simple Query: one implicit transaction; the error undoes both.
    assert run(t, "I", "I", Rows(["b"]), Outcome("UPDATE 1"), Rows(["c"]), Outcome(None)) == [
        ("b", "rolled_back"), ("c", "rolled_back"),
    ]  # fmt: skip


def test_explicit_transaction_is_held_until_its_end() -> None:
    t: TxnTracker[str] = TxnTracker()
    assert run(t, "I", "T", Outcome("BEGIN"), Rows(["a"]), Outcome("INSERT 0 1")) == []
    assert run(t, "T", "E", Rows(["b"]), Outcome("UPDATE 1"), Outcome(None)) == []
    # COMMIT of a failed transaction answers ROLLBACK.
    assert run(t, "E", "I", Outcome("ROLLBACK", "COMMIT")) == [
        ("a", "rolled_back"), ("b", "rolled_back"),
    ]  # fmt: skip
    assert run(t, "I", "T", Outcome("BEGIN"), Rows(["c"]), Outcome("UPDATE 1")) == []
    assert run(t, "T", "I", Outcome("COMMIT")) == [("c", "committed")]


def test_savepoints_roll_back_only_what_followed_them() -> None:
    t: TxnTracker[str] = TxnTracker()
    run(t, "I", "T", Outcome("BEGIN"), Rows(["a"]), Outcome("UPDATE 1"),
        Outcome("SAVEPOINT", 'SAVEPOINT "_pg3_1"'), Rows(["b"]), Outcome("UPDATE 1"),
        Outcome("SAVEPOINT", "savepoint inner"), Rows(["c"]), Outcome("UPDATE 1"))  # fmt: skip
    # Rolling back to the outer savepoint undoes b and c at once, and keeps the savepoint.
    assert run(t, "T", "T", Outcome("ROLLBACK", 'ROLLBACK TO SAVEPOINT "_pg3_1"')) == [
        ("b", "rolled_back"), ("c", "rolled_back"),
    ]  # fmt: skip
    assert run(t, "T", "T", Rows(["d"]), Outcome("UPDATE 1"),
               Outcome("ROLLBACK", 'rollback to "_pg3_1"')) == [("d", "rolled_back")]  # fmt: skip
    run(t, "T", "T", Outcome("RELEASE", 'RELEASE "_pg3_1"'), Rows(["e"]), Outcome("UPDATE 1"))
    assert run(t, "T", "I", Outcome("COMMIT")) == [("a", "committed"), ("e", "committed")]


def test_failed_commit_and_lost_connection_roll_back() -> None:
    t: TxnTracker[str] = TxnTracker()
    run(t, "I", "T", Outcome("BEGIN"), Rows(["a"]), Outcome("UPDATE 1"))
    # A serialization failure at COMMIT: an error, and the session is idle again.
    assert run(t, "T", "I", Outcome(None)) == [("a", "rolled_back")]
    run(t, "I", "T", Outcome("BEGIN"), Rows(["b"]), Outcome("UPDATE 1"))
    assert t.close() == [("b", "rolled_back")]
    run(t, "I", "T", Outcome("BEGIN"), Rows(["c"]), Outcome("UPDATE 1"))
    assert run(t, "T", "I", Outcome("PREPARE TRANSACTION")) == [("c", "prepared")]


@pytest.mark.parametrize(
    ("sql", "name"),
    [("SAVEPOINT a", "a"), ('savepoint "Mixed"', "Mixed"), ("RELEASE SAVEPOINT B", "b"),
     ("rollback transaction to savepoint x", "x"), ("ROLLBACK WORK TO y", "y")],
)  # fmt: skip
def test_savepoint_names(sql: str, name: str) -> None:
    assert savepoint_name(sql) == name


IDENTITY = TableIdentity(7, "app", "users", "r", ("id",), "primary key")


def _capture(
    rows: list[tuple[str | None, str | None]], oid: bytes = b"7", **extra: object
) -> StatementCapture:
    encoded = tuple(
        (None if o is None else o.encode(), None if n is None else n.encode(), oid) for o, n in rows
    )
    fields = {"index": 0, "op": "update", "relation": "users", "roles": ("old", "new", "oid"),
              "rows": encoded, "identity": tuple(IDENTITY.to_wire()), "tag": "UPDATE 1"}  # fmt: skip
    fields.update(extra)
    return StatementCapture(**fields)  # type: ignore[arg-type]


def _events(capture: StatementCapture) -> list:  # type: ignore[type-arg]
    return mutation_events(capture, conn_id="c", start_ns=1, query_span="s", statement=None,
                           txn="c/1", secret=b"k" * 32)  # fmt: skip


def test_events_carry_op_key_and_changed_columns() -> None:
    insert, update, delete = _events(_capture([
        (None, '{"id": 1, "name": "ann", "n": 1.50}'),
        ('{"id": 1, "name": "ann", "n": 1.50}', '{"id": 1, "name": "bob", "n": 1.50}'),
        ('{"id": 1, "name": "bob", "n": 1.50}', None),
    ]))  # fmt: skip
    assert [e.attrs["op"] for e in (insert, update, delete)] == ["insert", "update", "delete"]
    assert update.attrs["changed"] == ["name"]
    assert insert.attrs["changed"] == ["id", "n", "name"]
    assert update.attrs["table"] == "app.users" and update.attrs["key_columns"] == ["id"]
    assert update.payload["key"] == {"id": "1"}
    assert json.loads(update.payload["after"])["name"] == "bob"
    # Values stay out of the plaintext attrs; the row is found by its keyed digest.
    assert "bob" not in json.dumps(update.attrs) and "1.50" not in json.dumps(update.attrs)
    assert {e.fingerprint for e in (insert, update, delete)} == {
        pk_digest("users", {"id": "1"}, b"k" * 32)
    }


def test_a_key_change_is_found_under_both_keys() -> None:
    new, old = _events(_capture([('{"id": 1, "v": 0}', '{"id": 2, "v": 0}')]))
    assert new.fingerprint == pk_digest("users", {"id": "2"}, b"k" * 32)
    assert old.fingerprint == pk_digest("users", {"id": "1"}, b"k" * 32)
    assert old.attrs["key_changed"] and not new.attrs.get("key_changed")


def test_another_table_with_the_same_name_is_not_given_its_key() -> None:
    (event,) = _events(_capture([('{"a": 1}', '{"a": 2}')], oid=b"99"))
    assert event.attrs["key_kind"] == "unknown"
    assert event.attrs["key_columns"] == ["a"]  # the whole row identifies it, for now
