"""Training load for the profile-guided build of scan-service (`scripts/pgo.sh`).

Runs an instrumented scan-service binary against the real local PostgreSQL, Redis and Pub/Sub
emulator, drives the scan paths production traffic takes, and stops it with SIGTERM so that it
writes its profile (into LLVM_PROFILE_FILE, set by the caller). The load is a mix, not the
benchmark's: known, unknown and malformed tag ids, with and without a valid or an unknown API key,
normalized responses held ~80 ms, and a client over its rate limit (429).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

from lib import ROOT, ensure_topic, free_port, fresh_database, get, psql, wrk
import scan

API_KEY = "vt_pgotrain_" + "k" * 32
TOPIC = "pgo-scan-events"


def mixed_script(known: list[str]) -> str:
    """A wrk script: 80% known tags, 12% unknown, 4% malformed ids; a quarter of the requests
    carry the valid API key and a few an unknown one."""
    paths = [*known, *scan.unknown_ids(len(known) * 12 // 80),
             *(random.choice(["short", "has.dot" * 4, "x" * 65, "bad%20id" * 3]) for _ in range(len(known) // 20))]
    keys = [API_KEY] * 25 + ["vt_unknown_" + "u" * 32] * 3 + [None] * 72
    lines = []
    for p in paths:
        key = random.choice(keys)
        header = f", {{['X-API-Key'] = '{key}'}}" if key else ""
        lines.append(f"wrk.format('GET', '/v1/scan/{p}'{header})")
    path = os.path.join(ROOT, "target", "pgo-train.lua")
    with open(path, "w") as f:
        f.write("local requests = {}\n")
        f.write("init = function(args)\n  requests = {" + ",\n".join(lines) + "}\nend\n")
        f.write("request = function()\n  return requests[math.random(#requests)]\nend\n")
    return path


def start(binary: str, env: dict, log: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([binary], env={**os.environ, "BIND_ADDR": f"127.0.0.1:{port}", "RUST_LOG": "warn",
                                           "LOG_FORMAT": "json", **env},
                            stdout=open(os.path.join(ROOT, "target", log), "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if get(port, "/healthz")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{binary} did not start; see target/{log}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, so the instrumented binary exits normally and writes its profile."""
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=30) != 0:
        raise RuntimeError(f"the instrumented scan-service exited with {proc.returncode}")


def main() -> None:
    binary = sys.argv[1]
    db = fresh_database("voketag_pgo_train")
    known = scan.seed(db)
    key_hash = hashlib.sha256(API_KEY.encode()).hexdigest()
    psql("INSERT INTO api_keys (id, name, prefix, key_hash, rate_limit_per_minute) VALUES "
         f"('00000000-0000-7000-8000-0000000000a1', 'pgo training', 'pgotrain', '\\x{key_hash}', 10000000)", db)
    ensure_topic(TOPIC)
    base = {"DATABASE_URL": db, "REDIS_KEY_PREFIX": "pgo", "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
            "SCAN_EVENTS_TOPIC": TOPIC}
    script = mixed_script(known)

    # Saturated, normalization off: the path's own cost dominates the profile.
    proc, port = start(binary, {**base, **scan.UNLIMITED, "SCAN_MIN_RESPONSE_MS": "0", "SCAN_JITTER_MS": "0"},
                       "pgo-train-raw.log")
    try:
        print("[pgo] training: normalization off, c=64, 25 s", flush=True)
        print(f"[pgo]   {wrk(f'http://127.0.0.1:{port}', 64, 25, script)}", flush=True)
    finally:
        stop(proc)
    # Defaults: responses held 80 ms +- 10 ms, and one client over its limit.
    proc, port = start(binary, base, "pgo-train-normalized.log")
    try:
        print("[pgo] training: normalized, c=200, 8 s (most refused by the per-IP limit)", flush=True)
        print(f"[pgo]   {wrk(f'http://127.0.0.1:{port}', 200, 8, script)}", flush=True)
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
