"""The example service of docker/compose.yaml: a small order API on PostgreSQL.

It knows nothing about flux-proxy: it reads DATABASE_URL like any twelve-factor
app, and appends the request's W3C ``traceparent`` to its SQL as a sqlcommenter
comment (what OpenTelemetry's sqlcommenter integrations do), so the sidecar can
group each request's queries into one execution.

    curl -s localhost:8080/orders -d '{"customer": "ada", "total": 12.5}'
    curl -s localhost:8080/orders
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import psycopg

DATABASE_URL = os.environ["DATABASE_URL"]
PORT = int(os.environ.get("PORT", "8000"))
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

_local = threading.local()


def connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DATABASE_URL, autocommit=True)
    return conn


def commented(sql: str, traceparent: str) -> str:
    return f"{sql} /*traceparent='{quote(traceparent, safe='')}'*/"


class Handler(BaseHTTPRequestHandler):
    def _traceparent(self) -> str:
        header = self.headers.get("traceparent", "")
        if TRACEPARENT.fullmatch(header):
            return header
        return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"ok": True})
        elif self.path == "/orders":
            sql = "SELECT id, customer, total FROM orders ORDER BY id"
            rows = connection().execute(commented(sql, self._traceparent())).fetchall()
            self._reply(200, [{"id": i, "customer": c, "total": float(t)} for i, c, t in rows])
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/orders":
            self._reply(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        try:
            order = json.loads(self.rfile.read(length) or b"{}")
            customer, total = str(order["customer"]), float(order["total"])
        except (ValueError, KeyError, TypeError):
            self._reply(400, {"error": 'expected {"customer": "...", "total": 12.5}'})
            return
        traceparent = self._traceparent()
        conn = connection()
        with conn.transaction():
            sql = "INSERT INTO orders (customer, total) VALUES (%s, %s) RETURNING id"
            (order_id,) = conn.execute(commented(sql, traceparent), (customer, total)).fetchone()
        self._reply(201, {"id": order_id, "traceparent": traceparent})


def main() -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS orders"
            " (id serial PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL)"
        )
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    print(f"orders: listening on :{PORT}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
