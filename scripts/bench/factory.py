"""Factory service benchmarks: idempotency-layer overhead on a POST, and the scan-event consumer."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
import time
import uuid

from lib import ROOT, RELEASE, Service, fresh_database, percentile

ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-0123456789"
AUDIT_KEY = os.path.join(ROOT, "services", "factory-service", "tests", "fixtures", "audit_k1.pem")
EMULATOR = os.environ.get("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")


def factory_env(db_url: str, name: str) -> dict:
    """A production-like factory: signed audit checkpoints, limits high enough that nothing is refused."""
    return {
        "APP_ENV": "production",
        "DATABASE_URL": db_url,
        "REDIS_KEY_PREFIX": f"bench-{name}-{uuid.uuid4().hex[:8]}",
        "JWT_SECRET": "bench-jwt-secret-" + uuid.uuid4().hex,
        "BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
        "BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "ADMIN_RATE_LIMIT_RPS": "1000000",
        "ADMIN_RATE_LIMIT_BURST": "1000000",
        "AUDIT_SIGNING_KEY_FILE": AUDIT_KEY,
        "AUDIT_SIGNING_KEY_ID": "bench",
        "PUBSUB_EMULATOR_HOST": EMULATOR,
        "SCAN_EVENTS_TOPIC": f"bench-{name}-scan-events",
        "SCAN_EVENTS_SUBSCRIPTION": f"bench-{name}-factory-scan-events",
        "SCAN_EVENTS_DLQ_TOPIC": f"bench-{name}-scan-events-dlq",
    }


def login(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/auth/login",
                     body=json.dumps({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
                     headers={"content-type": "application/json", "x-device-id": "bench-device-0123456789"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"login: HTTP {r.status} {body[:200]!r}")
        return json.loads(body)["access_token"]
    finally:
        conn.close()


class Poster:
    """POST /v1/products over one keep-alive connection, a unique SKU each time."""

    def __init__(self, port: int, token: str, tag: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        self.tag, self.n = tag, 0

    def post(self, idempotent: bool) -> float:
        """One create; returns its response time in ms."""
        self.n += 1
        body = json.dumps({"name": "Bench product", "sku": f"B-{self.tag}-{self.n}"})
        headers = dict(self.headers)
        if idempotent:
            headers["idempotency-key"] = f"bench-{self.tag}-{self.n}-{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/products", body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status != 201:
            raise RuntimeError(f"POST /v1/products: HTTP {r.status} {data[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def concurrent_posts(port: int, token: str, clients: int, seconds: float) -> float:
    """`clients` keep-alive clients POST with fresh Idempotency-Keys for `seconds`; returns req/s."""
    counts, errors = [0] * clients, []
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        poster = Poster(port, token, f"c{i}-{uuid.uuid4().hex[:6]}")
        try:
            while time.perf_counter() < stop_at:
                poster.post(True)
                counts[i] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            poster.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"concurrent POSTs failed: {errors[0]}")
    return sum(counts) / (time.perf_counter() - started)


def pubsub_setup(env: dict) -> None:
    subprocess.run([os.path.join(RELEASE, "factory-service"), "pubsub", "setup"], check=True,
                   env={**os.environ, "RUST_LOG": "warn", "LOG_FORMAT": "json", **env},
                   stdout=subprocess.DEVNULL, timeout=120)


def idempotency(quick: bool) -> dict:
    """p50/p99 of sequential POST /v1/products with and without an Idempotency-Key, interleaved."""
    n = 300 if quick else 2000
    env = factory_env(fresh_database("voketag_bench_factory"), "factory")
    pubsub_setup(env)
    svc = Service("factory-service", env, ["serve"]).start()
    try:
        token = login(svc.port)
        poster = Poster(svc.port, token, uuid.uuid4().hex[:8])
        for i in range(100):  # warm up connections, caches and the chain head
            poster.post(i % 2 == 0)
        plain, keyed = [], []
        # Alternating, so drift in the machine's load hits both series alike.
        for i in range(2 * n):
            (keyed if i % 2 else plain).append(poster.post(bool(i % 2)))
        poster.close()
        clients, secs = 8, 3 if quick else 8
        rps = concurrent_posts(svc.port, token, clients, secs)
        return {
            "n": n,
            "plain": (percentile(plain, 0.5), percentile(plain, 0.99)),
            "keyed": (percentile(keyed, 0.5), percentile(keyed, 0.99)),
            "concurrent": (clients, secs, rps),
            "rss": svc.peak_rss_mib(),
        }
    finally:
        svc.stop()


def idempotency_rows(r: dict, row) -> list[str]:
    (p50, p99), (k50, k99) = r["plain"], r["keyed"]
    clients, secs, rps = r["concurrent"]
    return [
        row(f"POST /v1/products, no Idempotency-Key, c=1 ({r['n']:,} requests)", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"),
        row(f"POST /v1/products, fresh Idempotency-Key each, c=1 ({r['n']:,} requests)",
            f"p50 {k50:.2f} ms, p99 {k99:.2f} ms"),
        row("idempotency-layer overhead (keyed minus plain)",
            f"p50 **{k50 - p50:+.2f} ms**, p99 {k99 - p99:+.2f} ms", "p50 < 0.5 ms", k50 - p50 < 0.5),
        row(f"POST /v1/products with Idempotency-Key, c={clients} (Python clients, {secs} s)", f"{rps:,.0f} req/s"),
        row("factory-service peak RSS", f"{r['rss']:.0f} MiB (after the c=1 and c={clients} runs)"),
    ]


def events(quick: bool) -> dict:
    """`examples/events_bench.rs`: a backlog drained by one, then two consumers on the emulator."""
    backlog = 10000 if quick else 100000
    exe = os.path.join(RELEASE, "examples", "events_bench")
    # The example fails on its own after 60 s without progress; the timeout is a last resort.
    p = subprocess.run([exe, str(backlog)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "RUST_LOG": "warn", "PUBSUB_EMULATOR_HOST": EMULATOR})
    if p.returncode != 0:
        raise RuntimeError(f"events_bench failed (exit {p.returncode}):\n{p.stdout}{p.stderr[-2000:]}")
    out = p.stdout
    published = [float(x) for x in re.findall(r"published \d+ events in ([\d.]+) s", out)]
    runs = [(int(c), float(s), float(r)) for c, s, r in
            re.findall(r"consumers=(\d+): \d+ events applied in ([\d.]+) s = ([\d.]+) events/s", out)]
    rss = re.search(r"peak RSS: ([\d.]+) MiB", out)
    if len(runs) != 2 or len(published) != 2 or not rss:
        raise RuntimeError(f"could not read events_bench's output:\n{out}")
    return {"backlog": backlog, "published": published, "runs": runs, "rss": float(rss.group(1))}


def events_rows(r: dict, row) -> list[str]:
    rows = []
    for (consumers, secs, rate), pub in zip(r["runs"], r["published"]):
        rows.append(row(
            f"scan events applied from a backlog of {r['backlog']:,}, {consumers} consumer{'s' if consumers > 1 else ''}",
            f"**{rate:,.0f} events/s** ({secs:.1f} s; the backlog was published in {pub:.1f} s)",
            "≥ 5,000 events/s", rate >= 5000))
    rows.append(row("events_bench process peak RSS (publisher and consumers in one process)", f"{r['rss']:.0f} MiB"))
    return rows
