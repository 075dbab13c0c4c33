"""Admin-API races (scenarios 12, 13): one Idempotency-Key at once, a refresh-token replay storm."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from lib import Admin, Stack, check, metric, request, service

REFRESH, CSRF = "__Host-vt_refresh", "__Host-vt_csrf"


def _fire_together(n: int, fn) -> list:
    """Runs `fn(i)` on n threads released at the same instant."""
    gate = threading.Barrier(n)

    def go(i):
        gate.wait()
        return fn(i)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def one_idempotency_key(stack: Stack) -> str:
    """12. Concurrent requests with one Idempotency-Key: one side effect."""
    db_name = "chaos_s12"
    factory = service("s12-factory", "factory-service", stack.env(stack.pg.fresh_db(db_name), "s12"))
    admin = Admin(factory.port)
    key, name = f"chaos-{uuid.uuid4()}", f"idem-{uuid.uuid4().hex[:8]}"
    results = _fire_together(24, lambda _: admin.call(
        "POST", "/v1/api-keys", {"name": name}, {"Idempotency-Key": key}))
    statuses = sorted(r.status for r in results)
    created = [r for r in results if r.status == 201]
    ids = {r.json()["id"] for r in created}
    replayed = sum(1 for r in created if r.headers.get("idempotent-replayed") == "true")
    rows = int(stack.pg.sql(f"SELECT count(*) FROM api_keys WHERE name = '{name}'", db_name))
    check(set(statuses) <= {201, 409}, f"statuses {statuses}")
    check(len(ids) == 1 and rows == 1, f"{len(ids)} distinct key ids answered, {rows} rows in api_keys")
    # Once finished, the same key replays the first answer.
    again = admin.call("POST", "/v1/api-keys", {"name": name}, {"Idempotency-Key": key})
    check(again.status == 201 and again.headers.get("idempotent-replayed") == "true"
          and again.json()["id"] in ids, f"retry after completion: {again.status} {again.headers}")
    other = admin.call("POST", "/v1/api-keys", {"name": name + "x"}, {"Idempotency-Key": key})
    check(other.status == 422, f"same key, other body: {other.status}")
    rows = int(stack.pg.sql(f"SELECT count(*) FROM api_keys WHERE name LIKE '{name}%'", db_name))
    check(rows == 1, f"{rows} rows after the retries")
    return (f"24 simultaneous POST /v1/api-keys with one key: {statuses.count(201)}x201 "
            f"({replayed} replayed) + {statuses.count(409)}x409, one key id, 1 row; a later retry "
            f"replays it (Idempotent-Replayed: true); another body with the key: 422")


def refresh_storm(stack: Stack) -> str:
    """13. A refresh-token replay storm: the family is revoked and no new tokens are issued."""
    factory = service("s13-factory", "factory-service", stack.env(stack.pg.fresh_db("chaos_s13"), "s13"))
    admin = Admin(factory.port)
    device = admin.device

    def refresh(cookies: dict):
        return request(factory.port, "POST", "/v1/auth/refresh", {
            "Cookie": f"{REFRESH}={cookies[REFRESH]}; {CSRF}={cookies[CSRF]}",
            "X-CSRF-Token": cookies[CSRF], "X-Device-ID": device})
    first = refresh(admin.cookies)
    check(first.status == 200 and REFRESH in first.cookies, f"first refresh answered {first.status}")
    current = first.cookies
    # The stolen (already rotated) token replayed 40 times at once.
    storm = _fire_together(40, lambda _: refresh(admin.cookies))
    statuses = sorted({r.status for r in storm})
    codes = {r.json().get("error") for r in storm if r.body}
    issued = sum(1 for r in storm if REFRESH in r.cookies and r.cookies[REFRESH])
    # The first replay revokes the family; later ones may find it revoked already.
    check(statuses == [401] and "refresh_token_reused" in codes
          and codes <= {"refresh_token_reused", "invalid_refresh_token"}, f"storm: {statuses} {codes}")
    reused_n = sum(1 for r in storm if r.json().get("error") == "refresh_token_reused")
    check(issued == 0, f"{issued} storm responses set a new refresh token")
    newest = refresh(current)
    check(newest.status == 401, f"the family's newest token after the storm: {newest.status}")
    # A race of the legitimate token with itself: at most one rotation wins, the rest revoke.
    admin2 = Admin(factory.port, "chaos-device-second-000001")
    device = admin2.device
    race = _fire_together(20, lambda _: refresh(admin2.cookies))
    wins = [r for r in race if r.status == 200]
    check(len(wins) <= 1, f"{len(wins)} concurrent refreshes of one token succeeded")
    if wins:
        check(refresh(wins[0].cookies).status == 401, "the race winner's token still works")
    reused = metric(factory.metrics(), "auth_refreshes_total", result="reused")
    audited = stack.pg.sql("SELECT count(*) FROM audit_events WHERE action LIKE '%reuse%'", "chaos_s13")
    return (f"40 simultaneous replays of a rotated token: all 401 ({reused_n} refresh_token_reused, the "
            f"rest invalid_refresh_token once the family was revoked), 0 new refresh cookies; "
            f"the family's newest token then 401; 20 simultaneous refreshes of a live token: "
            f"{len(wins)} won, then the winner's token 401 too; auth_refreshes_total{{reused}} {reused:.0f}, "
            f"reuse audit events {audited}")


SCENARIOS = [
    (12, "Concurrent requests with one Idempotency-Key", one_idempotency_key),
    (13, "Refresh-token replay storm", refresh_storm),
]
