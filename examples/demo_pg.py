"""The README's demo: an order service records through the sidecar, then we inspect it.

    bash scripts/demo.sh        (sets up the machine, then runs this)

It starts a throwaway PostgreSQL, the sidecar in record mode in front of it,
and a tiny order service that handles three requests. Each request carries its
own W3C traceparent, which the service appends to its SQL as a sqlcommenter
comment (what OpenTelemetry's sqlcommenter does). The third request hits a bug
(it reuses an order number) and fails. Then it shows what the sidecar saw.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from protocols.sqlcommenter import add_comment  # noqa: E402
from protocols.traceparent import new_traceparent  # noqa: E402
from tests.fix_pg import start_pg_server  # noqa: E402
from tests.fix_sidecar import run_flux, start_sidecar  # noqa: E402


class OrderService:
    """Stands in for an instrumented application: one transaction per request."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn)

    def sql(self, statement: str, traceparent: str) -> str:
        return add_comment(statement, {"traceparent": traceparent, "application": "orders"})

    def create_order(self, number: int, customer: str, total: float) -> str:
        tp = new_traceparent().format()
        try:
            with self.conn.transaction():
                self.conn.execute(
                    self.sql(
                        "INSERT INTO orders (number, customer, total) VALUES (%s, %s, %s)", tp
                    ),
                    (number, customer, total),
                )
                self.conn.execute(
                    self.sql("UPDATE customers SET orders = orders + 1 WHERE name = %s", tp),
                    (customer,),
                )
            outcome = "201 created"
        except psycopg.errors.UniqueViolation as exc:
            outcome = f"500 ({exc.diag.message_primary})"
        print(f"  POST /orders number={number} customer={customer} -> {outcome}  trace {tp[3:35]}")
        return tp[3:35]


def show(title: str, *args: str, data_dir: Path) -> None:
    print(f"\n$ flux {' '.join(args)}   # {title}")
    result = run_flux(*args, "--data-dir", str(data_dir), check=False, env={"COLUMNS": "140"})
    print(result.stdout.rstrip() or result.stderr.rstrip())


def main() -> int:
    data_dir = REPO / ".flux-demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    print("starting a throwaway PostgreSQL 15 cluster...")
    server = start_pg_server(15)
    sidecar = None
    try:
        setup = psycopg.connect(server.dsn(), autocommit=True)
        setup.execute("CREATE TABLE customers (name text PRIMARY KEY, orders int NOT NULL)")
        setup.execute("CREATE TABLE orders (number int PRIMARY KEY, customer text, total numeric)")
        setup.execute("INSERT INTO customers VALUES ('ada', 0), ('grace', 0)")
        setup.close()
        sidecar = start_sidecar(data_dir, server, mode="record")
        print(f"sidecar recording on {sidecar.host}:{sidecar.port} -> {server.host}:{server.port}")
        print("\nthe order service handles three requests through the sidecar:")
        service = OrderService(sidecar.dsn())
        service.create_order(1001, "ada", 12.50)
        service.create_order(1002, "grace", 40.00)
        failed = service.create_order(1001, "grace", 7.25)  # the bug: a reused number
        service.conn.close()
        sidecar.wait_for(lambda s: s.get("executions", 0) >= 3)
        show("recent executions, newest first", "traces", data_dir=data_dir)
        show("the failed request, span by span", "trace", failed[:8], data_dir=data_dir)
        show("what the recorder did", "stats", data_dir=data_dir)
        print(
            f"\nthe recording is in {data_dir}; try: .venv/bin/flux trace {failed[:8]} "
            f"--data-dir {data_dir} --output json"
        )
        return 0
    finally:
        if sidecar is not None:
            sidecar.stop()
        server.destroy()


if __name__ == "__main__":
    sys.exit(main())
