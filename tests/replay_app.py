"""A small real web service for the replay tests: ``python -m tests.replay_app PORT``.

It does what an instrumented service does: every query carries the incoming
``traceparent`` in a sqlcommenter comment, calls out go through ``HTTPS_PROXY``,
and answers are JSON. ``APP_VERSION`` (1 or 2) is the code change between the
recording and the replay:

    GET  /accounts/ID      same in both versions
    GET  /broken           a 500 in both versions
    GET  /quote/ID?amount  v1 divides by the account's fee and fails when it is 0; v2 fixed
    GET  /report           v2 changed its query: replay has no recording for it
    GET  /profile/ID       v2 formats the answer differently
    GET  /stamp/ID         a timestamp and a request id made per response
    GET  /pay/ID           a query, then a call to the payment API (ORIGIN_URL/echo)
    POST /charge/ID        {"amount": "1.50"}: writes, for ``flux resume``

Environment: DATABASE_URL, ORIGIN_URL, APP_VERSION, HTTPS_PROXY, REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import requests

VERSION = int(os.environ.get("APP_VERSION", "1"))


class Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # What OpenTelemetry's sqlcommenter appends: the request's traceparent.
        traceparent = self.headers.get("traceparent")
        if traceparent:
            sql = f"{sql} /*traceparent='{traceparent}'*/"
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def account(self, account_id: str) -> tuple[str, Decimal, int]:
        rows = self.query(
            "SELECT owner, balance, fee_cents FROM accounts WHERE id = %s", (int(account_id),)
        )
        if not rows:
            raise Failure(404, f"no account {account_id}")
        owner, balance, fee = rows[0]
        return owner, balance, fee

    def do_GET(self) -> None:
        self.handle_request(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.handle_request(self.rfile.read(length))

    def handle_request(self, body: bytes) -> None:
        url = urlsplit(self.path)
        args = parse_qs(url.query)
        headers: list[tuple[str, str]] = []
        try:
            status, answer = self.route(url.path, args, body, headers)
        except Failure as exc:
            status, answer = exc.status, {"error": str(exc)}
        except psycopg.Error as exc:
            status, answer = 500, {"error": f"database: {str(exc).strip()}"}
        except Exception as exc:  # what an unhandled bug looks like from outside
            status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-app-version", str(VERSION))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def route(
        self, path: str, args: dict[str, list[str]], body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, Any]:
        if match := re.fullmatch(r"/accounts/(\d+)", path):
            owner, balance, _ = self.account(match[1])
            headers.append(("set-cookie", f"visit={uuid.uuid4()}; HttpOnly"))
            return 200, {"id": int(match[1]), "owner": owner, "balance": str(balance)}
        if path == "/broken":
            self.query("SELECT count(*) FROM accounts")
            raise Failure(500, "the ledger is still broken")
        if match := re.fullmatch(r"/quote/(\d+)", path):
            owner, _, fee_cents = self.account(match[1])
            amount = Decimal(args.get("amount", ["0"])[0])
            # v1 divides by zero for an account without fees.
            fee = Decimal(0) if VERSION >= 2 and fee_cents == 0 else amount * 100 / fee_cents
            return 200, {"owner": owner, "amount": str(amount), "fee": str(fee)}
        if path == "/report":
            sql = "SELECT count(*), sum(balance) FROM accounts"
            if VERSION >= 2:
                sql = "SELECT count(*), sum(balance), max(balance) FROM accounts"
            row = self.query(sql)[0]
            return 200, {"accounts": row[0], "total": str(row[1])}
        if match := re.fullmatch(r"/profile/(\d+)", path):
            owner, balance, _ = self.account(match[1])
            if VERSION >= 2:
                return 200, {"owner": owner.title(), "balance": float(balance)}
            return 200, {"owner": owner, "balance": str(balance)}
        if match := re.fullmatch(r"/stamp/(\d+)", path):
            owner, _, _ = self.account(match[1])
            now = datetime.datetime.now(datetime.UTC).isoformat()
            return 200, {"owner": owner, "served_at": now, "request_id": str(uuid.uuid4())}
        if match := re.fullmatch(r"/pay/(\d+)", path):
            owner, _, _ = self.account(match[1])
            return self.pay(owner)
        if (match := re.fullmatch(r"/charge/(\d+)", path)) and self.command == "POST":
            amount = Decimal(json.loads(body)["amount"])
            rows = self.query(
                "UPDATE accounts SET balance = balance - %s WHERE id = %s RETURNING balance",
                (amount, int(match[1])),
            )
            if not rows:
                raise Failure(404, f"no account {match[1]}")
            return 200, {"id": int(match[1]), "balance": str(rows[0][0])}
        raise Failure(404, f"no route for {path}")

    def pay(self, owner: str) -> tuple[int, Any]:
        headers = {}
        if traceparent := self.headers.get("traceparent"):
            headers["traceparent"] = traceparent
        response = requests.post(
            os.environ["ORIGIN_URL"] + "/echo",
            json={"owner": owner, "amount": "9.99"},
            headers=headers,
            timeout=30,
        )
        if response.status_code != 200:
            raise Failure(502, f"payment API answered {response.status_code}")
        return 200, {"owner": owner, "gateway": response.json()}


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
