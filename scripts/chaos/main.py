"""`make chaos`: runs every failure scenario against the real processes and writes the matrix.

Usage: python3 scripts/chaos/main.py [--only 1,2,14] [--no-doc]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(__file__))

import audit  # noqa: E402
import database  # noqa: E402
import events  # noqa: E402
import factory_api  # noqa: E402
import fuzz_scan  # noqa: E402
import ratelimit  # noqa: E402
from lib import (OUT, ROOT, Fail, PrivateEmulator, PrivatePostgres, PrivateRedis, Stack,  # noqa: E402
                 procs_mark, stop_started_since)

DOC = os.path.join(ROOT, "docs", "RELIABILITY.md")
BEGIN, END = "<!-- chaos:results:begin -->", "<!-- chaos:results:end -->"
# Seconds each scenario may take before it is failed (the million-IP one is the long one).
LIMITS = {14: 420, 9: 330}
DEFAULT_LIMIT = 150


class ScenarioTimeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise ScenarioTimeout()


def all_scenarios():
    found = [*ratelimit.SCENARIOS, *database.SCENARIOS, *events.SCENARIOS, *audit.SCENARIOS,
             *factory_api.SCENARIOS, *fuzz_scan.SCENARIOS]
    return sorted(found, key=lambda s: s[0])


def run(only: set[int] | None) -> list[tuple[int, str, bool, str, float]]:
    os.makedirs(OUT, exist_ok=True)
    print("[chaos] starting private PostgreSQL, Redis and Pub/Sub emulator on free loopback ports",
          flush=True)
    stack = Stack(PrivatePostgres().init(), PrivateRedis("redis").start(), PrivateEmulator().start())
    print(f"[chaos] postgres :{stack.pg.port}  redis :{stack.redis.port}  emulator :{stack.emulator.port}"
          f"  (logs in {os.path.relpath(OUT, ROOT)}/)", flush=True)
    signal.signal(signal.SIGALRM, _alarm)
    results = []
    for number, title, fn in all_scenarios():
        if only and number not in only:
            continue
        print(f"\n[chaos] {number:>2}. {title}", flush=True)
        mark = procs_mark()
        t0 = time.monotonic()
        signal.alarm(LIMITS.get(number, DEFAULT_LIMIT))
        try:
            saw = fn(stack)
            ok = True
        except Fail as e:
            ok, saw = False, str(e)
        except ScenarioTimeout:
            ok, saw = False, f"scenario exceeded its {LIMITS.get(number, DEFAULT_LIMIT)} s limit"
        except Exception as e:  # noqa: BLE001 - a broken scenario is a FAIL, not a crash of the suite
            ok, saw = False, f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            signal.alarm(0)
            stop_started_since(mark)
        took = time.monotonic() - t0
        print(f"[chaos] {'PASS' if ok else 'FAIL'} {number}. {title} ({took:.0f}s): {saw}", flush=True)
        results.append((number, title, ok, saw, took))
        # A scenario that stops the shared private PostgreSQL must leave it running.
        if not stack.pg_running():
            stack.pg.start()
    return results


def write_doc(results, total: float, argv: list[str]) -> None:
    cpus = os.cpu_count()
    lines = [
        BEGIN,
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, command `make chaos`"
        + (f" (`{' '.join(argv)}`)" if argv else "")
        + f", {total:.0f} s, {platform.machine()} with {cpus} CPUs, debug builds.",
        "",
        "| # | scenario | result | what the run saw | time |",
        "|---|---|---|---|---|",
    ]
    for number, title, ok, saw, took in results:
        saw = saw.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {number} | {title} | {'PASS' if ok else '**FAIL**'} | {saw} | {took:.0f} s |")
    lines.append(END)
    block = "\n".join(lines)
    with open(DOC) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(DOC, "w") as f:
        f.write(text)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated scenario numbers")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/RELIABILITY.md")
    args = ap.parse_args()
    only = {int(x) for x in args.only.split(",")} if args.only else None
    t0 = time.monotonic()
    results = run(only)
    total = time.monotonic() - t0
    failed = [r for r in results if not r[2]]
    print(f"\n[chaos] {len(results) - len(failed)} passed, {len(failed)} failed in {total:.0f} s")
    for number, title, ok, _, _ in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {number:>2}. {title}")
    if not args.no_doc and not only:
        write_doc(results, total, [])
        print(f"[chaos] results written to {os.path.relpath(DOC, ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
