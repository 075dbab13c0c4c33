"""`make fuzz`: schemathesis against the factory's /openapi.json with an admin bearer token.

Property checked: no response is a 5xx (`not_a_server_error`), and the process survives.
Usage: python3 scripts/chaos/fuzz_api.py [--max-examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from lib import (OUT, ROOT, Admin, PrivateEmulator, PrivatePostgres, PrivateRedis, Stack,  # noqa: E402
                 service)

VENV = os.path.join(ROOT, "target", "fuzz-venv")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-examples", type=int, default=int(os.environ.get("FUZZ_MAX_EXAMPLES", "60")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", str(int(time.time())))))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    stack = Stack(PrivatePostgres().init(), PrivateRedis("fuzz-redis").start(), PrivateEmulator().start())
    env = stack.env(stack.pg.fresh_db("chaos_fuzz"), "fuzz", ACCESS_TOKEN_TTL_SEC=3600)
    stack.setup_topics(env)
    factory = service("fuzz-factory", "factory-service", env)
    admin = Admin(factory.port)
    cmd = [os.path.join(VENV, "bin", "schemathesis"), "run", f"http://127.0.0.1:{factory.port}/openapi.json",
           "-H", f"Authorization: Bearer {admin.token}", "-H", "X-Device-ID: chaos-fuzz-device-000001",
           "--checks", "not_a_server_error", "--max-examples", str(args.max_examples),
           "--seed", str(args.seed), "--request-timeout", "20", "--workers", "2",
           "--report", "junit", "--report-dir", os.path.join(OUT, "schemathesis")]
    print(f"[fuzz] seed {args.seed}; factory on :{factory.port}; {' '.join(cmd[:3])} ...", flush=True)
    rc = subprocess.run(cmd).returncode
    alive = factory.proc.alive()
    panics = factory.proc.output().count("panicked")
    print(f"[fuzz] schemathesis exit {rc}; factory {'alive' if alive else 'DEAD'}; panics in log: {panics}"
          f" (log: {os.path.relpath(factory.proc.log_path, ROOT)})")
    return 0 if rc == 0 and alive and panics == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
