"""Scan service benchmarks: throughput against the Redis floor, normalized latency, timing t-test."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import string
import subprocess
import threading
import time
from typing import NamedTuple

from lib import ROOT, RELEASE, ensure_topic, Service, WrkResult, fresh_database, get, histogram_quantiles, percentile, psql, welch_t, wrk

LUA = os.path.join(ROOT, "services", "scan-service", "src", "ratelimit", "token_bucket.lua")
# Rounds of the raw throughput / Redis floor comparison.
ROUNDS = 3
# Scan events the Pub/Sub emulator handles before the throughput rounds, and the longest the
# warm-up may take. The emulator is a JVM: a fresh one spends 15 to 23 us of CPU per event, and
# 3 to 5 us once its JIT has compiled the publish path, which took 600,000 to 800,000 events
# here (docs/PERFORMANCE.md). The managed Pub/Sub runs on Google's machines, not on ours; a
# cold stand-in for it would charge the service for the emulator's start-up.
WARM_EVENTS = 1_000_000
WARM_MAX_SECS = 120
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNLIMITED = {"RATE_LIMIT_IP_PER_MINUTE": "10000000", "RATE_LIMIT_IP_BURST": "10000000"}
# The throughput rounds measure the scan path with its Redis call. Saturated at c=64 on a slow
# or noisy VM, a decision can wait longer than the default 50 ms (all 64 requests queue behind
# one stall), and five such waits open the breaker: for the next 60 s the service then decides
# in its in-process fallback, without Redis, and a round would measure a cheaper path. The
# rounds' service therefore gets a longer bound, and every round's decisions are counted from
# /metrics: a round with a fallback decision does not count (see `decisions`).
RAW_REDIS_TIMEOUT_MS = "1000"
# The scan-service executable measured: the profile-guided build, which scripts/bench.sh makes
# with scripts/pgo.sh and passes here; the plain release build when unset (BENCH_PGO=0).
SCAN_BIN = os.environ.get("SCAN_SERVICE_BIN") or None


def seed(db_url: str, tags: int = 10000) -> list[str]:
    psql(
        "INSERT INTO products (id, name, sku) VALUES ('00000000-0000-7000-8000-000000000001', 'Bench bag', 'BENCH-1');"
        "INSERT INTO batches (id, product_id, quantity) VALUES ('00000000-0000-7000-8000-000000000002', "
        f"'00000000-0000-7000-8000-000000000001', {tags});"
        "INSERT INTO tags (tag_id, batch_id, product_id) SELECT md5(random()::text || g::text), "
        "'00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001' "
        f"FROM generate_series(1, {tags}) g;",
        db_url,
    )
    return psql("SELECT tag_id FROM tags ORDER BY tag_id LIMIT 1000", db_url).split()


def unknown_ids(n: int) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    return ["u" + "".join(random.choice(alphabet) for _ in range(31)) for _ in range(n)]


def wrk_script(tags: list[str], keys: list[str | None] | None = None, name: str = "bench-tags.lua") -> str:
    """A wrk script scanning a random tag of `tags` per request. The requests are formatted
    once per wrk thread (`init`), so each request costs wrk a table look-up rather than a
    `wrk.format` call: the load generator shares the two cores with the service and Redis,
    and every microsecond it spends is one the service does not get (about 1.6 us a request
    measured with /proc CPU times). `keys`, when given, is the `X-API-Key` sent with each tag's
    request (None: no key); the script is written to target/`name`."""
    path = os.path.join(ROOT, "target", name)
    with open(path, "w") as f:
        f.write("local tags = {" + ",".join(f'"{t}"' for t in tags) + "}\n")
        f.write("local requests = {}\n")
        if keys is None:
            f.write("init = function(args)\n"
                    "  for i, tag in ipairs(tags) do requests[i] = wrk.format('GET', '/v1/scan/' .. tag) end\n"
                    "end\n")
        else:
            f.write("local keys = {" + ",".join(f'"{k}"' if k else "false" for k in keys) + "}\n")
            f.write("init = function(args)\n"
                    "  for i, tag in ipairs(tags) do\n"
                    "    local headers = keys[i] and {['X-API-Key'] = keys[i]} or nil\n"
                    "    requests[i] = wrk.format('GET', '/v1/scan/' .. tag, headers)\n"
                    "  end\n"
                    "end\n")
        f.write("request = function()\n  return requests[math.random(#requests)]\nend\n")
    return path


def evalsha_benchmark(connections: int, requests: int, *options: str) -> str:
    """redis-benchmark running the service's own Lua script with EVALSHA on one bucket (limits
    that refuse nothing), from one client thread; its output."""
    sha = subprocess.run(["redis-cli", "SCRIPT", "LOAD", open(LUA).read()], check=True,
                         capture_output=True, text=True).stdout.strip()
    return subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", "6379", "-c", str(connections), "-n", str(requests),
         "--threads", "1", *options, "EVALSHA", sha, "1", "bench:rl:{ip:127.0.0.1}", "10000000", "10000000", "1"],
        check=True, capture_output=True, text=True).stdout


def redis_floor(connections: int) -> float:
    """The throughput floor of a scan: the script's own throughput at `connections` (at least
    100,000 calls, 3,000 per connection)."""
    out = evalsha_benchmark(connections, max(100000, connections * 3000), "-q")
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


def redis_latency(requests: int) -> dict:
    """A reference for a decision's latency: the script's own round trip from one connection, back
    to back, as redis-benchmark's C client sees it (its latency summary: a line of column names,
    such as p50 and p99, then a line of their values in milliseconds)."""
    out = evalsha_benchmark(1, requests)
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if "latency summary" in line)
    summary = dict(zip(lines[at + 1].split(), (float(x) for x in lines[at + 2].split())))
    return {"requests": requests, "p50_ms": summary["p50"], "p99_ms": summary["p99"]}


def pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cpu_seconds(pid_list: list[int]) -> float:
    """User plus system CPU time of the processes, from /proc (threads included)."""
    ticks = 0
    for pid in pid_list:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ticks / CLK_TCK


def timed_wrk(svc: Service | Lean, seconds: int, script: str, processes: dict[str, list[int]]):
    """A c=64 wrk run against `svc` (anything with a `base` URL: the service or the lean route) and
    each process group's CPU per request in it, in microseconds."""
    before = {name: cpu_seconds(p) for name, p in processes.items()}
    res = wrk(svc.base, 64, seconds, script)
    requests = max(res.rps * seconds, 1.0)
    return res, {name: (cpu_seconds(p) - before[name]) * 1e6 / requests for name, p in processes.items()}


class Round(NamedTuple):
    """One throughput round: the service, the lean route and the Redis floor back to back."""
    ratio: float
    raw: WrkResult
    cpu: dict
    lean_ratio: float
    lean_cpu: float
    in_redis: float
    without: float


class Lean:
    """`examples/lean_scan.rs`: one EVALSHA of the same script behind a bare axum route."""

    def __enter__(self) -> "Lean":
        self.proc = subprocess.Popen([os.path.join(RELEASE, "examples", "lean_scan")],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"listening on ([\d.]+:\d+)", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"lean_scan did not start: {line!r}")
        self.base = f"http://{found.group(1)}"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def warm_emulator(svc: Service, script: str, processes: dict[str, list[int]]) -> dict:
    """Scans at c=64 in 5 s runs until the emulator has taken WARM_EVENTS events (or
    WARM_MAX_SECS have passed), with the emulator's CPU per event in the first and last run."""
    started, events, per_event = time.time(), 0.0, []
    while events < WARM_EVENTS and time.time() - started < WARM_MAX_SECS:
        res, cpu = timed_wrk(svc, 5, script, processes)
        events += res.rps * 5
        per_event.append(cpu["emulator"])
    return {"events": events, "secs": time.time() - started, "first_us": per_event[0], "last_us": per_event[-1]}


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the series `name` whose labels include `labels` (NaN when there is none)."""
    found = [float(m.group(2)) for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? ([0-9.e+]+)$", metrics_text, re.M)
             if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items())]
    return sum(found) if found else float("nan")


def decisions(port: int) -> tuple[float, float]:
    """`rate_limit_decisions_total` so far: made in Redis (allowed, limited), and made without it
    (the in-process fallback, or fail-closed refusals)."""
    text = get(port, "/metrics")[1].decode()
    count = lambda *outcomes: sum(metric_value(text, "rate_limit_decisions_total", outcome=o) for o in outcomes)
    return count("allowed", "limited"), count("fallback", "fail_closed")


def decided_during(port: int, run):
    """`run()`'s result, and the rate-limit decisions made meanwhile (in Redis, without it)."""
    before = decisions(port)
    result = run()
    return result, tuple(a - b for a, b in zip(decisions(port), before))


def timing_samples(port: int, known: list[str], unknown: list[str], per_class: int, workers: int = 32):
    """Response times of interleaved known- and unknown-tag scans, in ms."""
    samples = {"known": [], "unknown": []}
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        rng = random.Random()
        while True:
            with lock:
                if len(samples["known"]) >= per_class and len(samples["unknown"]) >= per_class:
                    return
                need = [k for k in samples if len(samples[k]) < per_class]
            kind = rng.choice(need)
            tag = rng.choice(known if kind == "known" else unknown)
            t0 = time.perf_counter()
            conn.request("GET", f"/v1/scan/{tag}")
            r = conn.getresponse()
            r.read()
            elapsed = (time.perf_counter() - t0) * 1000
            expected = 200 if kind == "known" else 404
            if r.status != expected:
                raise RuntimeError(f"unexpected status {r.status} for a {kind} tag")
            with lock:
                samples[kind].append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples["known"][:per_class], samples["unknown"][:per_class]


def run(quick: bool) -> dict:
    secs = 8 if quick else 15
    db = fresh_database("voketag_bench_scan")
    known = seed(db)
    script = wrk_script(known)
    base_env = {"DATABASE_URL": db, "REDIS_KEY_PREFIX": "bench", "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
                "SCAN_EVENTS_TOPIC": "bench-scan-events", **UNLIMITED}
    results: dict = {"pgo": SCAN_BIN is not None}
    ensure_topic("bench-scan-events")

    svc = Service("scan-service", {**base_env, "SCAN_MIN_RESPONSE_MS": "0", "SCAN_JITTER_MS": "0",
                                    "REDIS_TIMEOUT_MS": RAW_REDIS_TIMEOUT_MS}, binary=SCAN_BIN).start()
    try:
        for tag in known:  # warm the caches
            get(svc.port, f"/v1/scan/{tag}")
        processes = {"service": [svc.proc.pid], "redis": pids("redis-server"),
                     "emulator": pids("cloud-pubsub-emulator")}
        results["warm"] = warm_emulator(svc, script, processes) if not quick else None
        if quick:
            wrk(svc.base, 64, 3, script)
        published_before = metric_value(get(svc.port, "/metrics")[1].decode(), "scan_events_published_total")
        # Three rounds, each the service, the lean route and the floor back to back, so slow
        # drift of the VM touches every side of a ratio alike; the round with the median ratio
        # is reported.
        rounds = []
        with Lean() as lean:
            for _ in range(ROUNDS):
                (raw, cpu), (in_redis, without) = decided_during(
                    svc.port, lambda: timed_wrk(svc, max(secs // 2, 4), script, processes))
                bare, bare_cpu = timed_wrk(lean, max(secs // 2, 4), script, {"lean": [lean.proc.pid]})
                floor = redis_floor(64)
                rounds.append(Round(raw.rps / floor if raw.rps else 0.0, raw, cpu, bare.rps / floor, bare_cpu["lean"],
                                    in_redis, without))
        results["ratios"] = sorted(r.ratio for r in rounds)
        results["lean_ratios"] = sorted(r.lean_ratio for r in rounds)
        results["decided"] = {"in_redis": sum(r.in_redis for r in rounds), "without": sum(r.without for r in rounds),
                              "rounds_without": sum(1 for r in rounds if r.without != 0)}
        # The reported round is the median of the rounds whose every decision was made in Redis
        # (of all rounds if none was; the decisions row then says so and the target is missed).
        counted = [r for r in rounds if r.without == 0] or rounds
        median = sorted(counted, key=lambda r: r.ratio)[len(counted) // 2]
        ratio, results["raw"], results["raw_cpu"] = median.ratio, median.raw, median.cpu
        results["lean_ratio"], results["raw_without"] = median.lean_ratio, median.without
        results["lean_cpu"] = median.lean_cpu
        results["redis_floor"] = results["raw"].rps / ratio if ratio else float("nan")
        # Every scan's event must have been published, none dropped: a ratio bought by a
        # publisher that falls behind and sheds events would not count.
        time.sleep(1.5)
        metrics = get(svc.port, "/metrics")[1].decode()
        results["events"] = {
            "published": metric_value(metrics, "scan_events_published_total") - published_before,
            "dropped": metric_value(metrics, "scan_events_dropped_total"),
            "buffered": metric_value(metrics, "scan_events_buffered"),
        }
        results["rl_quantiles"] = histogram_quantiles(metrics, "rate_limit_redis_seconds", (0.5, 0.99))
        results["rss_raw"] = svc.peak_rss_mib()
    finally:
        svc.stop()

    svc = Service("scan-service", {**base_env, "SCAN_MIN_RESPONSE_MS": "80", "SCAN_JITTER_MS": "10"},
                  binary=SCAN_BIN).start()
    try:
        for tag in known:
            get(svc.port, f"/v1/scan/{tag}")
        # This service has the default REDIS_TIMEOUT_MS: when the machine stalls (1,000 connections
        # opening at once can do it), decisions time out, the breaker opens for 60 s and the
        # in-process fallback decides. Each run's decisions are counted so that the table says so.
        results["norm80"], results["norm80_decided"] = decided_during(
            svc.port, lambda: wrk(svc.base, 80, secs, script))
        metrics = get(svc.port, "/metrics")[1].decode()
        results["rl_quantiles_norm"] = histogram_quantiles(metrics, "rate_limit_redis_seconds", (0.5, 0.99))
        results["norm1000"], results["norm1000_decided"] = decided_during(
            svc.port, lambda: wrk(svc.base, 1000, secs, script))
        per_class = 2000 if quick else 5000
        k, u = timing_samples(svc.port, known, unknown_ids(2000), per_class)
        results["ttest"] = {"n": per_class, "t": welch_t(k, u),
                            "known_p50": percentile(k, 0.5), "unknown_p50": percentile(u, 0.5),
                            "known_p99": percentile(k, 0.99), "unknown_p99": percentile(u, 0.99)}
        results["rss_norm"] = svc.peak_rss_mib()
    finally:
        svc.stop()
    results["decisions"] = decision_latency(quick)
    return results


def decision_latency(quick: bool) -> dict:
    """The rate limiter on its own (`examples/ratelimit_bench.rs`): closed-loop c=1 and c=16, and
    paced at 1,000 decisions/s, each line of its output one JSON object; then the same script
    from redis-benchmark at c=1, a reference for a decision's latency on this machine."""
    exe = os.path.join(RELEASE, "examples", "ratelimit_bench")
    decisions = 10000 if quick else 50000
    args = ["--decisions", str(decisions), "--paced-secs", "5" if quick else "15"]
    out = subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout
    runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    results = {(r["mode"], r["concurrency"]): r for r in runs}
    # Right after, on the same machine: what Redis's own client gets from the same script. On
    # a noisy machine its tail can be as high as the decision's (twentieth look).
    results["redis_c1"] = redis_latency(decisions)
    return results
