"""A stand-in for a card payment API, served over HTTPS on loopback.

    python examples/payments.py --cert server.pem --key server.key [--listen 127.0.0.1:0]

Prints ``payments: listening https://HOST:PORT`` once it accepts connections.

    POST /v1/charges  {"amount": <cents>, "currency": "eur", "reference": "...", ...}
                      Authorization: Bearer sk_test_...   Idempotency-Key: ...

Like the real ones, it asks for strong customer authentication (3-D Secure) above a
threshold: such a charge comes back ``requires_action`` with a ``next_action`` to send
the customer to, and no receipt yet. A repeated Idempotency-Key gets the first answer.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import threading
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

SCA_THRESHOLD_CENTS = 10_000
BASE = "https://payments.example"

app = Flask("payments")
_charges: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def _error(status: int, message: str) -> Any:
    return jsonify(error={"type": "invalid_request_error", "message": message}), status


@app.post("/v1/charges")
def create_charge() -> Any:
    if not request.headers.get("Authorization", "").startswith("Bearer sk_test_"):
        return _error(401, "missing or invalid API key")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, "expected a JSON object")
    amount = body.get("amount")
    if not isinstance(amount, int) or amount <= 0:
        return _error(422, "amount must be a positive integer number of cents")
    key = request.headers.get("Idempotency-Key") or secrets.token_hex(8)
    with _lock:
        if key in _charges:
            return jsonify(_charges[key])
        charge_id = "ch_" + secrets.token_hex(8)
        answer: dict[str, Any] = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "currency": body.get("currency", "eur"),
            "reference": body.get("reference"),
        }
        if amount >= SCA_THRESHOLD_CENTS:
            answer["status"] = "requires_action"
            answer["next_action"] = {
                "type": "redirect_to_url",
                "url": f"{BASE}/3ds/{charge_id}",
            }
        else:
            answer["status"] = "succeeded"
            answer["receipt_url"] = f"{BASE}/receipts/{charge_id}"
        _charges[key] = answer
    return jsonify(answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = make_server(host, int(port), app, threaded=True, ssl_context=(args.cert, args.key))
    print(f"payments: listening https://{host}:{server.server_port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
