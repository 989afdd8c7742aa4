"""Whose privileges a session's statements run with: its user, followed through ``SET
[SESSION | LOCAL] ROLE``, ``SET SESSION AUTHORIZATION``, ``RESET`` and ``DISCARD ALL``.

A capture reads the row it changes, which needs the current role's SELECT privilege
(see :mod:`.forms`); what the catalog lookup learnt about it is cached per role. So
the session's current role must be known when a statement is rewritten. Statements
are followed as the client sends them (before the server runs them, which is when
the rewrite is made). A change this module cannot read, or one made inside a
transaction that may yet roll back, makes the role unknown: a name no role can
have, so every table is looked up again, under whatever role is then current,
before anything is captured. Not followed: ``set_config('role', ...)`` inside a
query, and statements prepared before a role change and executed after it (if
the capture then fails, the table runs uncaptured for a while, see
:mod:`.identity`).
``SET LOCAL`` ends with its transaction, and so does a change inside a transaction
block once it ends: the rewriter calls :meth:`SessionRole.idle` at each ReadyForQuery
that says idle, and a ``COMMIT``/``ROLLBACK`` sent ahead of it counts as the end too.
"""

from __future__ import annotations

import re
from typing import Final

from protocols.sqltext import split_statements, statement_kind

ROLE_KINDS: Final = frozenset({"set", "reset", "discard"})
# Statements that neither change data nor need a role's privileges to be rewritten.
_CONTROL: Final = frozenset({"begin", "start", "savepoint", "release", "commit", "rollback",
                             "end", "abort", "select", "show"})  # fmt: skip
_ENDS: Final = frozenset({"commit", "rollback", "end", "abort", "prepare"})
# Not ROLLBACK TO SAVEPOINT, COMMIT PREPARED or PREPARE name AS: the transaction goes on.
_END = re.compile(
    r"(?:(?:commit|end|abort|rollback)(?:\s+(?:work|transaction))?(?:\s+and\s+(?:no\s+)?chain)?"
    r"|prepare\s+transaction\s+.*)\s*;?",
    re.I | re.S,
)
_NAME = r"(?P<name>\"(?:[^\"]|\"\")+\"|'(?:[^']|'')*'|[^\s;'\"]+)"
_SET_ROLE = re.compile(
    rf"set\s+(?:(?P<scope>session|local)\s+)?role(?:\s*=\s*|\s+to\s+|\s+){_NAME}\s*;?", re.I
)
_SET_AUTH = re.compile(
    rf"set\s+(?:(?P<scope>session|local)\s+)?session\s+authorization\s+{_NAME}\s*;?", re.I
)
_RESET = re.compile(r"reset\s+(?P<what>role|session\s+authorization)\s*;?", re.I)
_DISCARD_ALL = re.compile(r"discard\s+all\s*;?", re.I)
_MENTIONS = re.compile(r"\b(?:role|authorization)\b", re.I)
_ROLE_SETTINGS: Final = frozenset({"role", "session", "authorization"})
_SETTING = re.compile(r"set\s+(?:(?:session|local)\s+)?(?P<name>[a-z_][a-z0-9_.$]*)\b", re.I)
_UNKNOWN = "\x00unknown-"  # role names cannot hold NUL


def _name(text: str) -> str | None:
    """The role a SET names, as the catalog spells it; None for NONE/DEFAULT."""
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    lowered = text.lower()
    return None if lowered in ("none", "default") else lowered


class SessionRole:
    def __init__(self, user: str | None) -> None:
        """``user``: the session's user (StartupMessage), or None when it may already have
        changed its role (followed from a point after its start)."""
        self._unknown = 0
        self._user = user if user is not None else f"{_UNKNOWN}session"
        self._session = self._user  # SET SESSION AUTHORIZATION
        self._role: str | None = None  # SET ROLE; None: NONE
        # The role setting's value at the session's start (RESET ROLE and DISCARD ALL
        # return to it): a role's or a database's default, or the startup options'.
        self._default: str | None = None
        # What applies once the current transaction ends, if a change in it may not last.
        self._at_end: tuple[str, str | None] | None = None

    @property
    def current(self) -> str:
        return self._role or self._session

    def started_as(self, session: str, current: str) -> None:
        """What the server said the session's users are at its start, before any
        statement of the client's: they replace the StartupMessage's user."""
        self._user = self._session = session
        self._default = self._role = current if current != session else None
        self._at_end = None

    def seen(self, sql: str, *, in_transaction: bool) -> str:
        """A Query or Parse text the client sent; ``in_transaction``: the session was not
        idle at the last ReadyForQuery (a multi-statement text is one transaction too).
        Returns the role to rewrite this text for: a text that changes the role between
        its statements gets a role no cache holds (each table is only looked up)."""
        kind = statement_kind(sql)
        # A trailing ';' (psql, pgbench) ends the only statement: nothing to split.
        if kind not in ROLE_KINDS and kind not in _ENDS and ";" not in sql.rstrip(" \t\r\n;"):
            return self.current
        statements = split_statements(sql) if ";" in sql else [sql.strip()]
        several = len(statements) > 1
        changed = others = False
        for statement in statements:
            kind = statement_kind(statement)
            if kind in _ENDS and _END.fullmatch(statement.strip()):
                self.idle()
            elif kind in ROLE_KINDS:
                changed = self._change(statement, in_transaction or several) or changed
            elif kind not in _CONTROL:
                others = True
        if changed and others:
            return self._unknown_state()[1] or ""
        return self.current

    def idle(self) -> None:
        """The session is outside any transaction block."""
        if self._at_end is not None:
            self._session, self._role = self._at_end
            self._at_end = None

    def _change(self, statement: str, in_transaction: bool) -> bool:
        """Follows one SET/RESET/DISCARD; whether it may have changed the role."""
        before = (self._session, self._role)
        text = statement.strip()
        role = _SET_ROLE.fullmatch(text)
        auth = _SET_AUTH.fullmatch(text)
        reset = _RESET.fullmatch(text)
        scope = None
        if role is not None:
            self._role, scope = _name(role["name"]), role["scope"]
        elif auth is not None:
            self._session = _name(auth["name"]) or self._user
            self._role, scope = None, auth["scope"]
        elif reset is not None:
            if reset["what"].lower() == "role":
                self._role = self._default
            else:
                self._session, self._role = self._user, None
        elif _DISCARD_ALL.fullmatch(text):
            self._session, self._role = self._user, self._default
        elif statement_kind(text) == "set" and _MENTIONS.search(text):
            setting = _SETTING.match(text)
            if setting is not None and setting["name"].lower() not in _ROLE_SETTINGS:
                return False  # another setting, whatever its value says
            self._forget()  # a form not read here: whose privileges apply is not known
            return True
        else:
            return False  # another setting (RESET ALL leaves the role alone)
        if scope is not None and scope.lower() == "local":
            if self._at_end is None:
                self._at_end = before
        elif in_transaction:
            self._at_end = self._unknown_state()  # kept on COMMIT, undone on ROLLBACK
        return True

    def _forget(self) -> None:
        self._session, self._role = self._unknown_state()

    def _unknown_state(self) -> tuple[str, str | None]:
        self._unknown += 1
        return self._session, f"{_UNKNOWN}{self._unknown}"
