"""Scan-service rate limiting when Redis goes away, stalls or comes back (scenarios 1-4, 14)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from lib import (OUT, Admin, Fail, PrivateRedis, Stack, check, free_port, log, metric, service,
                 wait_until)

BREAKER = "circuit_breaker_state"


def _scan_stack(stack: Stack, name: str, redis: PrivateRedis, tags: int = 1, **extra):
    """A factory (to issue tags) and a scan service on `redis`; returns (scan, tag ids)."""
    db = stack.pg.fresh_db(f"chaos_{name}")
    # The Pub/Sub resources exist, so that /readyz names only what is down.
    stack.setup_topics(stack.env(db, name))
    factory = service(f"{name}-factory", "factory-service", stack.env(db, name))
    ids = Admin(factory.port).tags(tags)
    env = stack.env(db, name, REDIS_URL=redis.url, **extra)
    return service(f"{name}-scan", "scan-service", env), ids


def _scan(scan, tag: str, ip: str) -> tuple[int, dict, float]:
    r = scan.get(f"/v1/scan/{tag}", headers={"X-Forwarded-For": ip}, timeout=10)
    return r.status, r.headers, r.elapsed


def redis_down_fail_open(stack: Stack) -> str:
    """1. Redis stopped during scans, fail-open: the in-process limiter takes over."""
    redis = PrivateRedis("s01-redis").start()
    scan, (tag,) = _scan_stack(stack, "s01", redis, REDIS_TIMEOUT_MS=50)
    before = [_scan(scan, tag, "10.1.0.1")[0] for _ in range(5)]
    check(before == [200] * 5, f"scans before the fault: {before}")
    redis.stop()
    log("private Redis killed")
    # A fresh client IP: its bucket starts full, so exactly BURST (20) of 25 pass.
    with ThreadPoolExecutor(25) as pool:
        burst = list(pool.map(lambda _: _scan(scan, tag, "10.1.0.2"), range(25)))
    codes = sorted(s for s, _, _ in burst)
    ok, limited = codes.count(200), codes.count(429)
    check(ok == 20 and limited == 5, f"25 scans from one IP with Redis down: {ok}x200 {limited}x429 ({codes})")
    others = [_scan(scan, tag, f"10.1.1.{i}")[0] for i in range(30)]
    check(others == [200] * 30, f"30 scans from other IPs with Redis down: {others}")
    fallback = metric(scan.metrics(), "rate_limit_decisions_total", outcome="fallback")
    check(fallback >= 55, f"rate_limit_decisions_total{{outcome=fallback}} = {fallback}")
    return (f"before: 5x200; Redis killed; 25 concurrent from one IP: {ok}x200 + {limited}x429; "
            f"30 other IPs: 30x200; fallback decisions {fallback:.0f}")


def redis_down_fail_closed(stack: Stack) -> str:
    """2. Redis stopped during scans, fail-closed: 503 with Retry-After."""
    redis = PrivateRedis("s02-redis").start()
    scan, (tag,) = _scan_stack(stack, "s02", redis, RATE_LIMIT_FAIL_CLOSED="true")
    check(_scan(scan, tag, "10.2.0.1")[0] == 200, "scan before the fault was not 200")
    redis.stop()
    log("private Redis killed")
    seen = []
    for i in range(20):
        r = scan.get(f"/v1/scan/{tag}", headers={"X-Forwarded-For": f"10.2.0.{i}"})
        seen.append(r.status)
        check(r.status == 503, f"scan {i} with Redis down answered {r.status}: {r.body[:200]!r}")
        ra = r.headers.get("retry-after", "")
        check(ra.isdigit() and int(ra) >= 1, f"503 without a sane Retry-After: {ra!r}")
        check(r.json().get("error") == "service_unavailable", f"503 body: {r.body[:200]!r}")
    ready = scan.get("/readyz")
    check(ready.status == 503, f"/readyz with Redis down answered {ready.status}")
    check(ready.json().get("failing") == ["redis"], f"/readyz does not name redis alone: {ready.body!r}")
    return (f"20/20 scans 503 with Retry-After {ra} and error=service_unavailable; "
            f"/readyz 503 {ready.body.decode()[:120]}")


def redis_slow(stack: Stack) -> str:
    """3. Redis slower than REDIS_TIMEOUT_MS: decisions bounded by the timeout, breaker opens."""
    redis = PrivateRedis("s03-redis").start()
    scan, (tag,) = _scan_stack(stack, "s03", redis, REDIS_TIMEOUT_MS=50, CIRCUIT_BREAKER_THRESHOLD=5,
                               CIRCUIT_BREAKER_TIMEOUT_SEC=30)
    check(_scan(scan, tag, "10.3.0.1")[0] == 200, "scan before the fault was not 200")
    check(metric(scan.metrics(), BREAKER, name="redis-ratelimit") == 0, "breaker not closed at start")
    redis.cli("CLIENT", "PAUSE", "8000", "ALL")
    log("private Redis paused for 8 s (CLIENT PAUSE ALL)")
    results = [_scan(scan, tag, f"10.3.1.{i}") for i in range(12)]
    statuses = [s for s, _, _ in results]
    slowest = max(e for _, _, e in results)
    state = metric(scan.metrics(), BREAKER, name="redis-ratelimit")
    check(statuses == [200] * 12, f"fail-open scans while Redis stalls: {statuses}")
    # 50 ms limiter timeout + cache timeout + PostgreSQL look-up in a debug build: well under 1 s.
    check(slowest < 1.0, f"slowest scan took {slowest * 1000:.0f} ms with REDIS_TIMEOUT_MS=50")
    check(state == 1, f"circuit_breaker_state{{name=redis-ratelimit}} = {state}, expected 1 (open)")
    first5 = ", ".join(f"{e * 1000:.0f}" for _, _, e in results[:6])
    later = max(e for _, _, e in results[6:]) * 1000
    return (f"Redis paused 8 s: 12/12 scans 200 (fallback); first six took {first5} ms; "
            f"slowest {slowest * 1000:.0f} ms; after 5 timeouts breaker state 1 (open), "
            f"later scans at most {later:.0f} ms")


def breaker_recovery(stack: Stack) -> str:
    """4. The breaker closes again once Redis is back (half-open probe after the timeout)."""
    redis = PrivateRedis("s04-redis").start()
    scan, (tag,) = _scan_stack(stack, "s04", redis, CIRCUIT_BREAKER_THRESHOLD=3,
                               CIRCUIT_BREAKER_TIMEOUT_SEC=2, RATE_LIMIT_FAIL_CLOSED="true")
    check(_scan(scan, tag, "10.4.0.1")[0] == 200, "scan before the fault was not 200")
    port = redis.port
    redis.stop()
    statuses = [_scan(scan, tag, f"10.4.1.{i}")[0] for i in range(5)]
    state_open = metric(scan.metrics(), BREAKER, name="redis-ratelimit")
    check(statuses == [503] * 5 and state_open == 1, f"Redis down: {statuses}, breaker {state_open}")
    # Redis returns on the same port.
    redis.port = port
    redis.start()
    log("private Redis restarted on the same port")
    t0 = time.monotonic()

    def recovered():
        s = _scan(scan, tag, "10.4.2.1")[0]
        return s == 200 and metric(scan.metrics(), BREAKER, name="redis-ratelimit") == 0
    wait_until("scans 200 with the breaker closed", recovered, 20, 0.5)
    took = time.monotonic() - t0
    allowed0 = metric(scan.metrics(), "rate_limit_decisions_total", outcome="allowed")
    after = [_scan(scan, tag, f"10.4.3.{i}")[0] for i in range(10)]
    allowed = metric(scan.metrics(), "rate_limit_decisions_total", outcome="allowed") - allowed0
    check(after == [200] * 10 and allowed == 10, f"after recovery: {after}, Redis decisions {allowed}")
    return (f"Redis down: 5x503, breaker 1 (open); Redis back: breaker 0 (closed) and scans 200 "
            f"after {took:.1f}s (CIRCUIT_BREAKER_TIMEOUT_SEC=2); next 10 decided by Redis (allowed +{allowed:.0f})")


WRK_SCRIPT = r"""
-- Every request comes from a new client IP (X-Forwarded-For), spread over 10.0.0.0/8.
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  thread_id = tonumber(tid)
end
function request()
  counter = counter + 1
  local n = thread_id * 8000000 + counter
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("GET", nil, {["X-Forwarded-For"] = ip})
end
"""


def million_ips(stack: Stack) -> str:
    """14. A million distinct client IPs with Redis down: the fallback limiter's memory is bounded."""
    total = int(os.environ.get("CHAOS_IPS", "1000000"))
    dead = free_port()  # nothing listens here: Redis is "down" from the start
    db = stack.pg.fresh_db("chaos_s14")
    env = stack.env(db, "s14", REDIS_URL=f"redis://127.0.0.1:{dead}", RUST_LOG="warn")
    scan = service("s14-scan", "scan-service", env)
    script = os.path.join(OUT, "s14-distinct-ips.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    # A malformed tag id: every request still costs a token from its IP's bucket (the state under
    # test) but needs no database look-up, so the client, not PostgreSQL, sets the pace.
    url = f"http://127.0.0.1:{scan.port}/v1/scan/x"
    samples: list[tuple[float, int, float]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sample():
        while not done.is_set():
            m = scan.metrics()
            samples.append((time.monotonic() - t0, scan.proc.rss_kib(),
                            metric(m, "rate_limit_decisions_total", outcome="fallback")))
            done.wait(2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rss0 = scan.proc.rss_kib()
    try:
        while True:
            fallback = metric(scan.metrics(), "rate_limit_decisions_total", outcome="fallback")
            if fallback >= total:
                break
            check(time.monotonic() - t0 < 330, f"only {fallback:.0f} of {total} requests in 330 s")
            subprocess.run(["wrk", "-t2", "-c32", "-d20s", "--timeout", "5s", "-s", script, url],
                           check=True, capture_output=True, timeout=60)
            check(scan.proc.alive(), "scan-service died under load")
    finally:
        done.set()
        sampler.join(5)
    elapsed = time.monotonic() - t0
    m = scan.metrics()
    fallback = metric(m, "rate_limit_decisions_total", outcome="fallback")
    rss = [r for _, r, _ in samples]
    peak = max(rss)
    # Plateau: the highest RSS in the second half of the run against the first half's.
    half = len(rss) // 2
    first_half, second_half = max(rss[:half] or [rss0]), max(rss[half:])
    trace = " ".join(f"{n / 1000:.0f}k:{r / 1024:.0f}" for _, r, n in samples[:: max(1, len(samples) // 8)])
    check(peak < 300 * 1024, f"peak RSS {peak / 1024:.0f} MiB")
    check(second_half <= first_half * 1.25 + 16 * 1024,
          f"RSS still growing: first half max {first_half / 1024:.0f} MiB, second half {second_half / 1024:.0f} MiB")
    return (f"{fallback:.0f} requests from distinct IPs in {elapsed:.0f}s ({fallback / elapsed:.0f}/s); "
            f"RSS start {rss0 / 1024:.0f} MiB, max in first half {first_half / 1024:.0f} MiB, "
            f"in second half {second_half / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB "
            f"(requests:MiB {trace})")


SCENARIOS = [
    (1, "Redis stopped during scans, fail-open", redis_down_fail_open),
    (2, "Redis stopped during scans, fail-closed", redis_down_fail_closed),
    (3, "Redis slower than REDIS_TIMEOUT_MS", redis_slow),
    (4, "Breaker recovery after Redis returns", breaker_recovery),
    (14, "A million distinct client IPs, Redis down", million_ips),
]

__all__ = ["SCENARIOS", "Fail"]
