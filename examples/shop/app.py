"""A small order service: Flask, psycopg 3 and requests, instrumented with OpenTelemetry.

    DATABASE_URL=postgresql://... PAYMENTS_URL=https://... PAYMENTS_KEY=sk_test_... \\
    PORT=8000 python examples/shop/app.py

    POST /orders        {"customer": "ada@example.com", "items": [{"sku": "tea", "qty": 2}]}
    GET  /orders/<id>
    GET  /healthz

It knows nothing of flux. OpenTelemetry continues the trace of the incoming ``traceparent``
header (Flask), appends it to every statement as a sqlcommenter comment (psycopg), and
sends it on every outbound call (requests); ``HTTPS_PROXY`` and ``REQUESTS_CA_BUNDLE`` are
read by requests itself. Placing an order takes two short transactions around the call to
the payment API, so no transaction stays open while a remote service answers.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg
import requests
from flask import Flask, jsonify, request
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from werkzeug.exceptions import InternalServerError

DATABASE_URL = os.environ["DATABASE_URL"]
PAYMENTS_URL = os.environ["PAYMENTS_URL"].rstrip("/")
PAYMENTS_KEY = os.environ.get("PAYMENTS_KEY", "")

# Spans must be real (sampled) for their context to be propagated; no exporter is needed:
# the context travels in the comments and headers, which is all the sidecar reads.
trace.set_tracer_provider(TracerProvider())
PsycopgInstrumentor().instrument(
    enable_commenter=True,
    # Only the traceparent: driver versions in every statement are noise here.
    commenter_options={
        "db_driver": False,
        "dbapi_threadsafety": False,
        "dbapi_level": False,
        "driver_paramstyle": False,
        "libpq_version": False,
    },
)
RequestsInstrumentor().instrument()

app = Flask("shop")
FlaskInstrumentor().instrument_app(app, excluded_urls="healthz")
log = logging.getLogger("shop")

# The payment API's charge states, as the orders table names them.
ORDER_STATUS = {"succeeded": "paid", "requires_action": "awaiting_authentication"}


def charge(order_id: int, amount_cents: int, customer: str) -> dict[str, Any]:
    response = requests.post(
        f"{PAYMENTS_URL}/v1/charges",
        json={"amount": amount_cents, "currency": "eur", "reference": f"order-{order_id}",
              "customer": customer},
        headers={"Authorization": f"Bearer {PAYMENTS_KEY}",
                 "Idempotency-Key": f"order-{order_id}"},
        timeout=10,
    )  # fmt: skip
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


@app.post("/orders")
def create_order() -> Any:
    order = request.get_json(force=True)
    customer = str(order["customer"])
    items = [(str(item["sku"]), int(item["qty"])) for item in order["items"]]
    with psycopg.connect(DATABASE_URL) as conn:
        prices = dict(
            conn.execute(
                "SELECT sku, price_cents FROM products WHERE sku = ANY(%s)",
                ([sku for sku, _ in items],),
            ).fetchall()
        )
        unknown = sorted({sku for sku, _ in items} - prices.keys())
        if unknown:
            return jsonify(error=f"unknown products: {', '.join(unknown)}"), 422
        total = sum(prices[sku] * qty for sku, qty in items)
        row = conn.execute(
            "INSERT INTO orders (customer, total_cents, status) VALUES (%s, %s, 'pending')"
            " RETURNING id",
            (customer, total),
        ).fetchone()
        assert row is not None
        order_id = int(row[0])
        for sku, qty in items:
            conn.execute(
                "INSERT INTO order_lines (order_id, sku, qty, price_cents) VALUES (%s, %s, %s, %s)",
                (order_id, sku, qty, prices[sku]),
            )
        conn.commit()

        paid = charge(order_id, total, customer)
        status = ORDER_STATUS[paid["status"]]
        conn.execute(
            "UPDATE orders SET status = %s, charge_id = %s WHERE id = %s",
            (status, paid["id"], order_id),
        )
        conn.commit()
    return jsonify(
        order_id=order_id,
        status=status,
        total=f"{total / 100:.2f}",
        receipt_url=paid["receipt_url"],
    ), 201


@app.get("/orders/<int:order_id>")
def show_order(order_id: int) -> Any:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT customer, status, total_cents FROM orders WHERE id = %s", (order_id,)
        ).fetchone()
        if row is None:
            return jsonify(error=f"no order {order_id}"), 404
        lines = conn.execute(
            "SELECT sku, qty FROM order_lines WHERE order_id = %s ORDER BY sku", (order_id,)
        ).fetchall()
    customer, status, total = row
    return jsonify(
        order_id=order_id,
        customer=customer,
        status=status,
        total=f"{total / 100:.2f}",
        items=[{"sku": sku, "qty": qty} for sku, qty in lines],
    )


@app.get("/healthz")
def healthz() -> Any:
    return "ok\n"


@app.errorhandler(InternalServerError)
def internal_error(error: InternalServerError) -> Any:
    # Flask has logged the traceback already; clients get JSON, not an HTML page.
    return jsonify(error="internal server error"), 500


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="shop %(levelname)s %(message)s")
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), threaded=True)
