"""PostgreSQL stopped under the factory and the scan service (scenario 5)."""

from __future__ import annotations

import time
import uuid

from lib import Admin, Stack, check, log, service, wait_until


def postgres_down(stack: Stack) -> str:
    """5. PostgreSQL stopped: factory 503 with JSON, readyz 503, recovers by itself."""
    db_name = "chaos_s05"
    env = stack.env(stack.pg.fresh_db(db_name), "s05")
    # Both processes' Pub/Sub resources exist, so that /readyz names only what is down.
    stack.setup_topics(env)
    factory = service("s05-factory", "factory-service", env)
    scan = service("s05-scan", "scan-service", env)
    admin = Admin(factory.port)
    (tag,) = admin.tags(1)
    product = admin.call("POST", "/v1/products", {"name": "p", "sku": f"S05-{uuid.uuid4().hex[:8]}"}).json()["id"]
    stack.pg.stop()
    log("private PostgreSQL stopped (immediate)")
    try:
        t0 = time.monotonic()
        get = admin.call("GET", f"/v1/products/{product}")
        get_s = time.monotonic() - t0
        sku = f"S05-{uuid.uuid4().hex[:8]}"
        idem = {"Idempotency-Key": f"chaos-{uuid.uuid4()}"}
        post = admin.call("POST", "/v1/products", {"name": "during outage", "sku": sku}, idem)
        ready = factory.get("/readyz")
        scan_ready = scan.get("/readyz")
        health = factory.get("/healthz")
        for what, r in (("GET product", get), ("POST product", post), ("factory /readyz", ready),
                         ("scan /readyz", scan_ready)):
            check(r.status == 503, f"{what} with PostgreSQL down answered {r.status}: {r.body[:200]!r}")
            check(r.headers.get("content-type", "").startswith("application/json") and "error" in r.json(),
                  f"{what}: not a JSON error: {r.body[:200]!r}")
        for what, r in (("factory /readyz", ready), ("scan /readyz", scan_ready)):
            check(r.json().get("failing") == ["postgres"], f"{what} does not name postgres alone: {r.body!r}")
        check(health.status == 200, f"/healthz answered {health.status} (the process still serves)")
        check(get_s < 10, f"the 503 took {get_s:.1f}s")
    finally:
        stack.pg.start()
    log("private PostgreSQL started again")
    t0 = time.monotonic()
    wait_until("factory /readyz 200", lambda: factory.get("/readyz").status == 200, 60, 0.5)
    wait_until("scan /readyz 200", lambda: scan.get("/readyz").status == 200, 60, 0.5)
    wait_until("GET product 200", lambda: admin.call("GET", f"/v1/products/{product}").status == 200, 30, 0.5)
    took = time.monotonic() - t0
    check(scan.get(f"/v1/scan/{tag}").status == 200, "scan after recovery was not 200")
    retry = admin.call("POST", "/v1/products", {"name": "during outage", "sku": sku}, idem)
    check(retry.status == 201, f"retry of the refused POST with its Idempotency-Key: {retry.status} {retry.body[:200]!r}")
    rows = int(stack.pg.sql(f"SELECT count(*) FROM products WHERE sku = '{sku}'", db_name))
    check(rows == 1, f"{rows} products with the retried sku")
    return (f"PostgreSQL down: GET product 503 {get.json().get('error')} in {get_s * 1000:.0f} ms, POST 503 "
            f"(not kept for its Idempotency-Key), factory and scan /readyz 503 naming postgres, /healthz 200; "
            f"restarted: ready again after {took:.1f}s without a restart of the services; the POST "
            f"retried with the same key: 201, 1 row")


SCENARIOS = [(5, "PostgreSQL stopped", postgres_down)]
