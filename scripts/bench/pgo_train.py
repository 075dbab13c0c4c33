"""Training load for the profile-guided build of scan-service (`scripts/pgo.sh`).

Runs an instrumented scan-service binary against the real local PostgreSQL, Redis and Pub/Sub
emulator, drives the scan paths production traffic takes, and stops it with SIGTERM so that it
writes its profile (into LLVM_PROFILE_FILE, set by the caller). The load is a mix, not the
benchmark's: known, unknown and malformed tag ids, with and without a valid or an unknown API key,
normalized responses held ~80 ms, and a client over its rate limit (429).
"""

from __future__ import annotations

import hashlib
import random
import sys

from lib import Service, ensure_topic, fresh_database, psql, wrk
import scan

API_KEY = "vt_pgotrain_" + "k" * 32
TOPIC = "pgo-scan-events"


def mixed_script(known: list[str]) -> str:
    """A wrk script over 1,000 known tags, 150 unknown and 50 malformed ids (about 83%, 12% and
    4% of the requests); about a quarter carry the valid API key and 3% an unknown one."""
    malformed = ["short", "has.dot" * 4, "x" * 65, "bad%20id" * 3]
    ids = [*known, *scan.unknown_ids(150), *(random.choice(malformed) for _ in range(50))]
    keys = random.choices([API_KEY, "vt_unknown_" + "u" * 32, None], weights=[25, 3, 72], k=len(ids))
    return scan.wrk_script(ids, keys, "pgo-train.lua")


def train(binary: str, env: dict, log: str, connections: int, seconds: int, script: str, what: str) -> None:
    """One instrumented process under one load; it must exit 0 on SIGTERM to write its profile."""
    svc = Service("scan-service", env, binary=binary, log=log).start()
    try:
        print(f"[pgo] training: {what}, c={connections}, {seconds} s", flush=True)
        (res, (in_redis, without)) = scan.decided_during(
            svc.port, lambda: wrk(svc.base, connections, seconds, script))
        print(f"[pgo]   {res}; rate-limit decisions in Redis {in_redis:.0f}, without Redis {without:.0f}", flush=True)
    finally:
        code = svc.stop()
    if code != 0:
        raise SystemExit(f"[pgo] the instrumented scan-service exited with {code}; see target/{log}")
    if without:
        # Decided by the in-process fallback: the profile would describe a path that ships unused.
        raise SystemExit("[pgo] some rate-limit decisions were made without Redis; run again on a quieter machine")


def main() -> None:
    binary = sys.argv[1]
    db = fresh_database("voketag_pgo_train")
    known = scan.seed(db)
    key_hash = hashlib.sha256(API_KEY.encode()).hexdigest()
    psql("INSERT INTO api_keys (id, name, prefix, key_hash, rate_limit_per_minute) VALUES "
         f"('00000000-0000-7000-8000-0000000000a1', 'pgo training', 'pgotrain', '\\x{key_hash}', 10000000)", db)
    ensure_topic(TOPIC)
    # The longer Redis bound is the bench's, for the same reason (scan.RAW_REDIS_TIMEOUT_MS): a
    # stall of the loaded machine must not switch the path to the fallback. It changes no code path.
    base = {"DATABASE_URL": db, "REDIS_KEY_PREFIX": "pgo", "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
            "SCAN_EVENTS_TOPIC": TOPIC, "REDIS_TIMEOUT_MS": scan.RAW_REDIS_TIMEOUT_MS}
    script = mixed_script(known)
    # Saturated, normalization off: the path's own cost dominates the profile.
    train(binary, {**base, **scan.UNLIMITED, "SCAN_MIN_RESPONSE_MS": "0", "SCAN_JITTER_MS": "0"},
          "pgo-train-raw.log", 64, 25, script, "normalization off")
    # Defaults: responses held 80 ms +- 10 ms; requests without the key share one IP's limit (429).
    train(binary, base, "pgo-train-normalized.log", 200, 8, script, "normalized, one IP over its limit")


if __name__ == "__main__":
    main()
