"""What usually causes an error of a given class, and what to do about it.

PostgreSQL errors are classed by SQLSTATE (Appendix A of its manual; condition names
as there), HTTP failures by the proxy's ``error_kind`` or the status code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Advice:
    error_class: str  # a stable name, for programs: unique_violation, connection_refused...
    title: str  # for people: "unique violation (SQLSTATE 23505)"
    suggestion: str


# SQLSTATE -> (condition name, what to do)
_SQLSTATES: Final[dict[str, tuple[str, str]]] = {
    "23505": (
        "unique_violation",
        "a row with the same key already exists: look it up first, write it with INSERT "
        "... ON CONFLICT (DO NOTHING or DO UPDATE), or make the request idempotent (a "
        "retried or doubled request inserting twice is the usual cause)",
    ),
    "23503": (
        "foreign_key_violation",
        "the referenced row does not exist (on insert/update) or is still referenced (on "
        "delete): write the parent first, delete children first, check the id the app used, "
        "or choose ON DELETE CASCADE / SET NULL deliberately",
    ),
    "23502": (
        "not_null_violation",
        "a required column got NULL: the application did not set it (a field missing from "
        "the request or a mapping bug), or the column needs a DEFAULT",
    ),
    "23514": (
        "check_violation",
        "a value broke a CHECK constraint: validate it in the application before writing",
    ),
    "40001": (
        "serialization_failure",
        "a concurrent transaction conflicted with this one (SERIALIZABLE or REPEATABLE "
        "READ): retry the whole transaction from its BEGIN; this is expected under "
        "concurrency and safe to retry; keep transactions short to make it rare",
    ),
    "40P01": (
        "deadlock_detected",
        "two transactions waited on each other's locks: take row locks in one consistent "
        "order (e.g. ORDER BY id ... FOR UPDATE), keep transactions short, and retry the "
        "transaction that was chosen as the victim",
    ),
    "57014": (
        "query_canceled",
        "the statement was canceled, usually by statement_timeout: look at its plan "
        "(EXPLAIN ANALYZE), add the index it lacks or narrow it, or raise the timeout for "
        "this statement only (SET LOCAL statement_timeout)",
    ),
    "55P03": (
        "lock_not_available",
        "lock_timeout expired (or NOWAIT failed) waiting for a lock another transaction "
        "held: find the blocker in pg_stat_activity/pg_locks, shorten it, or retry later",
    ),
    "25P02": (
        "in_failed_sql_transaction",
        "an earlier statement of this transaction failed and the transaction was not "
        "rolled back: the real cause is that earlier statement",
    ),
    "42P01": (
        "undefined_table",
        "the table does not exist here: a migration not applied, a wrong schema or "
        "search_path, or the wrong database",
    ),
    "42703": (
        "undefined_column",
        "the column does not exist: the code and the schema disagree (a migration not "
        "applied or not yet deployed)",
    ),
    "42501": (
        "insufficient_privilege",
        "the database role lacks a privilege on the object: GRANT it, or use the right role",
    ),
    "53300": (
        "too_many_connections",
        "the server ran out of connection slots: use a pool, lower the pool size per "
        "instance, or raise max_connections",
    ),
    "R9001": (
        "replay_miss",
        "replay found no recorded answer: the code now sends a statement (or parameters) "
        "that the recording does not hold; compare with `flux trace diff`, or record again",
    ),
}

_SQLSTATE_CLASSES: Final[dict[str, tuple[str, str]]] = {
    "08": ("connection_exception", "the database connection failed: check the server and "
           "network, and let the pool reconnect"),
    "22": ("data_exception", "a value did not fit its type or range: validate input "
           "before it reaches SQL"),
    "23": ("integrity_constraint_violation", "the write broke a constraint: check the "
           "values against the schema's constraints"),
    "25": ("invalid_transaction_state", "a statement ran in the wrong transaction state: "
           "check the BEGIN/COMMIT structure of the code"),
    "28": ("invalid_authorization", "the database refused the credentials"),
    "40": ("transaction_rollback", "the transaction was rolled back by the server: retry it"),
    "42": ("syntax_error_or_access_rule_violation", "the statement is invalid for this "
           "schema or role: check the SQL against the schema deployed here"),
    "53": ("insufficient_resources", "the server ran out of a resource (disk, memory, "
           "connections): check its capacity"),
    "54": ("program_limit_exceeded", "a statement hit a server limit: simplify it"),
    "55": ("object_not_in_prerequisite_state", "an object was not in the state the "
           "statement needs (locked, in use): retry or fix the ordering"),
    "57": ("operator_intervention", "the server canceled or terminated the work "
           "(shutdown, admin command, timeout)"),
    "58": ("system_error", "the database server hit an I/O or system error: check its logs"),
    "XX": ("internal_error", "the database server hit an internal error: check its logs"),
    "P0": ("plpgsql_error", "a PL/pgSQL function raised: read its message and the function"),
}  # fmt: skip

# error_kind (recorder.httpcapture.classify_error) -> (title, what to do); {target} fills in.
_CONNECTION: Final[dict[str, tuple[str, str]]] = {
    "connection_refused": (
        "connection refused",
        "nothing accepted connections at {target}: the service is down or not listening "
        "there; check the URL and port the app used (configuration, service discovery)",
    ),
    "dns": (
        "DNS failure",
        "the host name of {target} did not resolve: check the name for typos, the "
        "resolver configuration, and that the service exists in this environment",
    ),
    "tls": (
        "TLS failure",
        "the TLS handshake with {target} failed: the certificate is untrusted, expired or "
        "for another name; check the CA bundle given to the proxy (--upstream-ca) and the "
        "server's certificate",
    ),
    "timeout": (
        "timeout",
        "{target} did not answer in time: the upstream is slow or unreachable; give the "
        "call an explicit timeout, retry idempotent calls with backoff, check its latency",
    ),
    "connection_closed": (
        "connection closed",
        "{target} closed the connection before answering: an upstream crash, an idle "
        "timeout on a reused connection, or a proxy in between; retry idempotent calls",
    ),
    "connection_lost": (
        "connection lost",
        "the connection ended in the middle of the exchange: the server or the client went "
        "away; check the other side's logs at that moment",
    ),
    "no_response": (
        "no response",
        "{target} gave no response: check the upstream's logs at that moment",
    ),
}

_HTTP_STATUS: Final[dict[int, tuple[str, str]]] = {
    401: ("auth_rejected", "the API at {target} refused the credentials: check the token or "
          "API key (expired, rotated, from another environment) and how the app sends it"),
    403: ("auth_rejected", "the API at {target} refused access: the credentials are valid "
          "but lack the permission or scope for this call"),
    404: ("not_found", "the API at {target} has no such resource: check the path and the "
          "ids the app put in it (a stale id, a changed API version)"),
    409: ("conflict", "the API at {target} reports a conflict with the resource's current "
          "state: re-read it and retry, or send an idempotency key"),
    429: ("rate_limited", "the API at {target} is rate limiting: slow down, honor "
          "Retry-After, back off with jitter, cache what can be cached"),
}  # fmt: skip


def for_sqlstate(sqlstate: str, message: str | None = None) -> Advice:
    code = sqlstate.upper()
    known = _SQLSTATES.get(code)
    if known is not None:
        name, suggestion = known
        if code == "57014" and message and "statement timeout" in message:
            name = "statement_timeout"
    else:
        name, suggestion = _SQLSTATE_CLASSES.get(
            code[:2], ("database_error", "read the error's message and detail")
        )
    return Advice(name, f"{name.replace('_', ' ')} (SQLSTATE {code})", suggestion)


def for_connection(error_kind: str, target: str) -> Advice:
    title, suggestion = _CONNECTION.get(
        error_kind, ("connection error", "the exchange with {target} failed: {kind}")
    )
    name = error_kind if error_kind in _CONNECTION else "connection_error"
    return Advice(name, title, suggestion.format(target=target, kind=error_kind))


def for_call_status(
    status: int, target: str, retry_after: str | None = None, reason: str | None = None
) -> Advice:
    """A call out that got an error answer; ``target`` is its host and port."""
    title = f"upstream {status} {reason}" if reason else f"upstream {status}"
    if status >= 500:
        text = (
            "the API at {target} failed on its side: retry idempotent calls with backoff, "
            "add a timeout and a fallback or circuit breaker, and check its status page"
        )
        if status == 503 and retry_after:
            text += f"; it asked to retry after {retry_after}"
        return Advice("upstream_5xx", title, text.format(target=target))
    name, text = _HTTP_STATUS.get(
        status,
        ("upstream_4xx", "the API at {target} rejected the request as invalid: compare what "
         "the app sent with the API's contract"),
    )  # fmt: skip
    if status == 429 and retry_after:
        text += f"; it asked to retry after {retry_after}"
    return Advice(name, title, text.format(target=target))


def for_inbound_status(status: int | None, target: str) -> Advice:
    """The request failed and nothing it did failed first: the cause is the app's own."""
    if status is None:
        return Advice("no_response", "no response", f"{target} got no response from the app")
    if status >= 500:
        return Advice(
            "app_error",
            f"application error {status}",
            "no query or call of this request failed first: the fault is in the app's own "
            "code (an exception, a failed assertion); look at its log for this trace id",
        )
    return Advice(
        "client_error",
        f"request rejected {status}",
        "the app rejected the request itself (validation, authentication, routing): "
        "compare the request with what the endpoint expects",
    )
