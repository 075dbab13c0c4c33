"""`make bench`: runs the benchmark suite and writes the figures into docs/PERFORMANCE.md.

Usage: python3 scripts/bench/bench.py [--quick] [--only scan,...]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))

import scan  # noqa: E402
from lib import ROOT  # noqa: E402

DOC = os.path.join(ROOT, "docs", "PERFORMANCE.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def scan_rows(r: dict) -> list[str]:
    raw, floor = r["raw"], r["redis_floor"]
    n80, n1000, t = r["norm80"], r["norm1000"], r["ttest"]
    rl, rln = r["rl_quantiles"], r["rl_quantiles_norm"]
    return [
        "| measurement | result | target |",
        "|---|---|---|",
        f"| scan, normalization off, c=64 | {raw.rps:,.0f} req/s, p50 {raw.p50_ms:.2f} ms, p99 {raw.p99_ms:.2f} ms"
        f" (errors {raw.errors}, non-2xx {raw.non_2xx}) | |",
        f"| redis-benchmark EVALSHA of the same script, c=64 | {floor:,.0f} req/s | |",
        f"| ratio scan / redis floor | **{raw.rps / floor:.2f}** | ≥ 0.60 |",
        f"| normalized scan, c=80 | **{n80.rps:,.0f} req/s** (bound 1,000), p50 {n80.p50_ms:.1f} ms, "
        f"p99 **{n80.p99_ms:.1f} ms** (non-2xx {n80.non_2xx}) | ≥ 950 req/s, p99 ≤ 92 ms |",
        f"| normalized scan, c=1000 | **{n1000.rps:,.0f} req/s** (bound 12,500), p50 {n1000.p50_ms:.1f} ms, "
        f"p99 {n1000.p99_ms:.1f} ms (errors {n1000.errors}) | ≥ 11,000 req/s |",
        f"| Welch t-test, known vs unknown tags ({t['n']} each) | **abs(t) = {abs(t['t']):.2f}**; p50 {t['known_p50']:.1f} / "
        f"{t['unknown_p50']:.1f} ms, p99 {t['known_p99']:.1f} / {t['unknown_p99']:.1f} ms | abs(t) < 4.5 |",
        f"| rate-limit decision inside the service (histogram), normalized c=80 (~1,000 req/s) | "
        f"p50 {rln[0.5] * 1000:.3f} ms, p99 **{rln[0.99] * 1000:.3f} ms** | p99 < 0.5 ms |",
        f"| rate-limit decision inside the service, saturated (c=64, normalization off) | "
        f"p50 {rl[0.5] * 1000:.3f} ms, p99 {rl[0.99] * 1000:.3f} ms | |",
        f"| scan-service peak RSS | {r['rss_raw']:.0f} MiB (c=64 run), {r['rss_norm']:.0f} MiB (c=1000 run) | |",
    ]


def audit_rows(quick: bool) -> list[str]:
    """The audit example: appends/s on one chain and verification speed over a 1,000,000-event chain."""
    events = "200000" if quick else "1000000"
    exe = os.path.join(ROOT, "target", "release", "examples", "audit_bench")
    out = subprocess.run([exe, events], check=True, capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "warn"}).stdout
    rows = ["| measurement | result | target |", "|---|---|---|"]
    for line in out.strip().splitlines():
        what, _, result = line.partition(": ")
        target = ""
        if what.startswith("append, unsigned"):
            target = "≥ 2,000 events/s"
        elif what.startswith("verify, hash-only"):
            target = "1,000,000 events ≤ 5 s"
        rows.append(f"| {what} | {result} | {target} |")
    return rows


def write_doc(sections: list[str], command: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = "\n".join([
        BEGIN,
        f"Last run: {now}, command `{command}`, on {machine()}. Redis, PostgreSQL, the Pub/Sub emulator,",
        "the services and the load generators share the machine.",
        "",
        *sections,
        END,
    ])
    text = open(DOC).read() if os.path.exists(DOC) else "# Performance\n\n" + BEGIN + "\n" + END + "\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    with open(DOC, "w") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test of the suite)")
    ap.add_argument("--only", default="scan,audit", help="comma-separated sections: scan, audit")
    args = ap.parse_args()
    only = set(args.only.split(","))
    sections = []
    if "scan" in only:
        print("== scan service", flush=True)
        rows = scan_rows(scan.run(args.quick))
        print("\n".join(rows), flush=True)
        sections += ["### Scan service", "", *rows, ""]
    if "audit" in only:
        print("== audit log", flush=True)
        rows = audit_rows(args.quick)
        print("\n".join(rows), flush=True)
        sections += ["### Audit log (one chain, release build, `examples/audit_bench.rs`)", "", *rows, ""]
    command = "make bench" + (" BENCH_ARGS=--quick" if args.quick else "")
    write_doc(sections, command)
    print(f"written to {os.path.relpath(DOC, ROOT)}")


if __name__ == "__main__":
    main()
