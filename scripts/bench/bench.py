"""`make bench`: runs the benchmark suite and writes the figures into docs/PERFORMANCE.md.

Usage: python3 scripts/bench/bench.py [--quick] [--signed-million] [--only scan,audit,idempotency,events]

Every target is marked met or MISSED in the tables. A run of some sections replaces only those
sections in the document; the others are kept, each with the date and command of its own run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import factory  # noqa: E402
import scan  # noqa: E402
from lib import RELEASE, ROOT  # noqa: E402

DOC = os.path.join(ROOT, "docs", "PERFORMANCE.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


HEADER = ["| measurement | result | target |", "|---|---|---|"]


def row(what: str, result: str, target: str = "", met: bool | None = None) -> str:
    """A table row; a target is marked met or MISSED."""
    if target and met is not None:
        target += ": met" if met else ": **MISSED**"
    return f"| {what} | {result} | {target} |"


def scan_rows(r: dict) -> list[str]:
    raw, floor = r["raw"], r["redis_floor"]
    n80, n1000, t = r["norm80"], r["norm1000"], r["ttest"]
    rl, rln = r["rl_quantiles"], r["rl_quantiles_norm"]
    return [
        row("scan-service build measured", "profile-guided (`make pgo`: trained on the mixed scan load of "
            "`scripts/bench/pgo_train.py`, not on these runs)" if r["pgo"] else
            "plain release build (`BENCH_PGO=0` or `--quick`: the bench's workspace build), not the profile-guided one "
            "(`make pgo`)"),
        row("scan, normalization off, c=64 (median round)", f"{raw.rps:,.0f} req/s, p50 {raw.p50_ms:.2f} ms, p99 {raw.p99_ms:.2f} ms"
            f" (errors {raw.errors}, non-2xx {raw.non_2xx})"),
        row("redis-benchmark EVALSHA of the same script, c=64 (same round)", f"{floor:,.0f} req/s"),
        row("CPU per scan in that round (user + system, from /proc)", ", ".join(
            f"{name} {us:.1f} us" for name, us in r["raw_cpu"].items())),
        *events_rows(r),
        decided_row(r["decided"]),
        row("ratio scan / redis floor (median of the rounds decided in Redis)", f"**{raw.rps / floor:.2f}** (rounds: "
            f"{', '.join(f'{x:.2f}' for x in r['ratios'])})", "≥ 0.60",
            raw.rps / floor >= 0.60 and r["raw_without"] == 0),
        row("reference: a bare axum route making the same one EVALSHA (`examples/lean_scan.rs`, plain "
            "release build), ratio to the floor in the same round", f"{r['lean_ratio']:.2f} (rounds: "
            f"{', '.join(f'{x:.2f}' for x in r['lean_ratios'])}); the service keeps "
            f"{raw.rps / floor / r['lean_ratio']:.2f} of it; the lean process took "
            f"{r['lean_cpu']:.1f} us of CPU per request in that round (the service {r['raw_cpu']['service']:.1f})"),
        row("normalized scan, c=80", f"**{n80.rps:,.0f} req/s** (bound 1,000), p50 {n80.p50_ms:.1f} ms, "
            f"p99 **{n80.p99_ms:.1f} ms** (non-2xx {n80.non_2xx}){decided_note(r['norm80_decided'])}",
            "≥ 950 req/s, p99 ≤ 92 ms", n80.rps >= 950 and n80.p99_ms <= 92),
        row("normalized scan, c=1000", f"**{n1000.rps:,.0f} req/s** (bound 12,500), p50 {n1000.p50_ms:.1f} ms, "
            f"p99 {n1000.p99_ms:.1f} ms (errors {n1000.errors}){decided_note(r['norm1000_decided'])}",
            "≥ 11,000 req/s", n1000.rps >= 11000),
        row(f"Welch t-test, known vs unknown tags ({t['n']} each)", f"**abs(t) = {abs(t['t']):.2f}**; p50 "
            f"{t['known_p50']:.1f} / {t['unknown_p50']:.1f} ms, p99 {t['known_p99']:.1f} / {t['unknown_p99']:.1f} ms",
            "abs(t) < 4.5", abs(t["t"]) < 4.5),
        *decision_rows(r["decisions"]),
        row("rate-limit decision inside the service (histogram), normalized c=80 (~1,000 req/s)",
            f"p50 {rln[0.5] * 1000:.3f} ms, p99 {rln[0.99] * 1000:.3f} ms"),
        row("rate-limit decision inside the service, saturated (c=64, normalization off)",
            f"p50 {rl[0.5] * 1000:.3f} ms, p99 {rl[0.99] * 1000:.3f} ms"),
        row("scan-service peak RSS", f"{r['rss_raw']:.0f} MiB (c=64 run), {r['rss_norm']:.0f} MiB (c=1000 run)"),
    ]


def events_rows(r: dict) -> list[str]:
    """The emulator's warm-up, and what became of the rounds' scan events."""
    e, w = r["events"], r["warm"]
    rows = []
    if w:
        rows.append(row("Pub/Sub emulator warm-up before the rounds (scans at c=64)",
                        f"{w['events']:,.0f} events in {w['secs']:.0f} s; emulator CPU per event "
                        f"{w['first_us']:.1f} us in the first 5 s, {w['last_us']:.1f} us in the last"))
    rows.append(row("scan events of the c=64 rounds", f"published {e['published']:,.0f}, "
                    f"dropped {e['dropped']:,.0f}, still buffered {e['buffered']:,.0f}",
                    "none dropped", e["dropped"] == 0))
    return rows


def decided_row(d: dict) -> str:
    """Where the c=64 rounds' rate-limit decisions were made: a round that fell back to the
    in-process limiter measured a path without Redis, and is left out of the ratio."""
    note = f" ({d['rounds_without']:.0f} round(s) left out of the ratio)" if d["rounds_without"] else ""
    return row("rate-limit decisions of the c=64 rounds (`rate_limit_decisions_total`)",
               f"in Redis {d['in_redis']:,.0f}, without Redis (fallback or fail-closed) {d['without']:,.0f}{note}",
               "all in Redis", d["without"] == 0)


def decided_note(decided: tuple[float, float]) -> str:
    """Where a normalized run's rate-limit decisions were made. Its throughput is bound by the
    hold time, not by the path's cost, so a fallback does not void the row; it is shown."""
    in_redis, without = decided
    return f"; rate-limit decisions in Redis {in_redis:,.0f}, without Redis {without:,.0f}"


def decision_rows(d: dict) -> list[str]:
    """`RateLimiter::check` timed by its caller (examples/ratelimit_bench.rs)."""
    c1, c16, paced, rc = d[("closed", 1)], d[("closed", 16)], d[("paced", 1)], d["redis_c1"]
    return [
        row(f"rate-limit decision, `RateLimiter::check` against Redis, one caller back to back "
            f"({c1['decisions']:,} decisions)",
            f"p50 {c1['p50_ms']:.3f} ms, p99 **{c1['p99_ms']:.3f} ms**, p99.9 {c1['p999_ms']:.3f} ms "
            f"({c1['per_sec']:,.0f}/s)", "p99 < 0.5 ms", c1["p99_ms"] < 0.5),
        row(f"reference: redis-benchmark EVALSHA of the same script, one connection back to back, right after "
            f"({rc['requests']:,} calls)",
            f"p50 {rc['p50_ms']:.3f} ms, p99 {rc['p99_ms']:.3f} ms (Redis's own C client, no Rust on the path: for comparison with the row above)"),
        row(f"rate-limit decision, 16 concurrent callers ({c16['decisions']:,} decisions)",
            f"p50 {c16['p50_ms']:.3f} ms, p99 {c16['p99_ms']:.3f} ms ({c16['per_sec']:,.0f}/s)"),
        row(f"rate-limit decision, paced at 1,000/s from one caller ({paced['decisions']:,} decisions)",
            f"p50 {paced['p50_ms']:.3f} ms, p99 {paced['p99_ms']:.3f} ms, p99.9 {paced['p999_ms']:.3f} ms"),
    ]


def audit_rows(quick: bool, signed_million: bool) -> list[str]:
    """The audit example: appends/s on one chain and verification speed over a 1,000,000-event chain
    (with per-event signatures over a tenth of it, or over the whole million with --signed-million)."""
    events = "200000" if quick else "1000000"
    exe = os.path.join(RELEASE, "examples", "audit_bench")
    out = subprocess.run([exe, events] + ([events] if signed_million else []), check=True, capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "warn"}).stdout
    rows = []
    for line in out.strip().splitlines():
        what, _, result = line.partition(": ")
        rate = float(re.search(r"([\d.]+) events/s", result).group(1))
        if what.startswith("append, unsigned"):
            rows.append(row(what, result, "≥ 2,000 events/s", rate >= 2000))
        elif what.startswith("verify, hash-only"):
            n = int(re.search(r"(\d+) events", what).group(1))
            secs = float(re.search(r"([\d.]+) s =", result).group(1))
            # A shorter (--quick) chain is judged by the time 1,000,000 would take at its rate.
            if n != 1_000_000:
                result += f" (1,000,000 at this rate: {1e6 / rate:.1f} s)"
                secs = 1e6 / rate
            rows.append(row(what, result, "1,000,000 events ≤ 5 s", secs <= 5))
        elif what.startswith("verify, per-event signatures"):
            rows.append(row(what, result, "1,000,000 events ≤ 5 s", 1e6 / rate <= 5))
        else:
            rows.append(row(what, result))
    # The example prints plain integers: 1449 events/s, 200000 events.
    return [re.sub(r"\b(\d{4,})(?= events)", lambda m: f"{int(m.group(1)):,}", r) for r in rows]


SECTIONS = {  # name: heading, in the document's order
    "scan": "Scan service",
    "audit": "Audit log (one chain, release build, `examples/audit_bench.rs`)",
    "idempotency": "Idempotency layer (factory-service, `POST /v1/products`)",
    "events": "Scan-event consumer (Pub/Sub emulator, `examples/events_bench.rs`)",
}

NOTES = {
    "scan": "",
    "audit": "Appends: 16 writers for 5 s each, every event its own transaction; the signed-checkpoints run has "
             "the service's checkpointer job (signing key, default cadence) running beside them. Verification "
             "reads a chain written directly. Unless `--signed-million` is given, the signed chain is a tenth "
             "of the hash-only one, because building it costs one RSA signature per event (signed on every "
             "core: about 4 minutes for a million); its row names its length and the time 1,000,000 would take.",
    "idempotency": "Release `factory-service serve` (fresh database, signed audit checkpoints, limits that refuse "
                   "nothing), one keep-alive Python client alternating requests without and with a fresh "
                   "`Idempotency-Key` (unique SKU each), after 100 warm-up requests; each create also appends an "
                   "audit event. Overhead = keyed minus plain quantile.",
    "events": "A backlog is published to a fresh topic first, then drained by one (then two) consumers in the "
              "example process, each with its own pool, until `sum(scan_count)` reaches the backlog; the drain "
              "fails after 60 s without progress.",
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def previous_sections(text: str) -> dict[str, list[str]]:
    """The sections of the block now in the document, by heading; each starts with its `Run:` line."""
    m = re.search(re.escape(BEGIN) + "(.*?)" + re.escape(END), text, flags=re.S)
    if not m:
        return {}
    # A block written before sections carried their own run line: take the block's.
    last = re.search(r"Last run: (.*?), command `(.*?)`", m.group(1))
    fallback = f"Run: {last.group(1)}, `{last.group(2)}`." if last else "Run: date unknown."
    out: dict[str, list[str]] = {}
    for part in re.split(r"^### ", m.group(1), flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        lines = body.strip("\n").splitlines()
        if not lines or not lines[0].startswith("Run: "):
            lines = [fallback, "", *lines]
        out[heading.strip()] = lines
    return out


def write_doc(new: dict[str, list[str]], command: str, now: str) -> None:
    """Replaces the sections in `new` (by name); keeps the others from the previous block."""
    text = open(DOC).read() if os.path.exists(DOC) else "# Performance\n\n" + BEGIN + "\n" + END + "\n"
    kept = previous_sections(text)
    body = []
    for name, heading in SECTIONS.items():
        if name in new:
            lines = [f"Run: {now}, `{command}`.", "", *new[name]]
        else:
            lines = kept.get(heading, ["Not run yet."])
        body += [f"### {heading}", "", *lines, ""]
    block = "\n".join([
        BEGIN,
        f"Last run: {now}, command `{command}` ({', '.join(n for n in SECTIONS if n in new)}), on {machine()}.",
        "Redis, PostgreSQL, the Pub/Sub emulator, the services and the load generators share the machine.",
        "Each section says which run it comes from.",
        "",
        *body,
        END,
    ])
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    with open(DOC, "w") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test of the suite)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections (default all): {', '.join(SECTIONS)}")
    ap.add_argument("--signed-million", action="store_true",
                    help="audit: build and verify a signed chain as long as the hash-only one (1,000,000; "
                         "signing it takes minutes) instead of a tenth of it")
    args = ap.parse_args()
    only = [n for n in args.only.split(",") if n]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    runners = {
        "scan": lambda: scan_rows(scan.run(args.quick)),
        "audit": lambda: audit_rows(args.quick, args.signed_million),
        "idempotency": lambda: factory.idempotency_rows(factory.idempotency(args.quick), row),
        "events": lambda: factory.events_rows(factory.events(args.quick), row),
    }
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections: dict[str, list[str]] = {}
    for name in SECTIONS:
        if name not in only:
            continue
        print(f"== {SECTIONS[name]}", flush=True)
        started = time.monotonic()
        rows = [*HEADER, *runners[name]()]
        print("\n".join(rows), flush=True)
        print(f"({time.monotonic() - started:.0f} s)", flush=True)
        note = NOTES.get(name, "")
        sections[name] = [*rows] + (["", note] if note else [])
    flags = (["--quick"] if args.quick else []) + (["--signed-million"] if args.signed_million else []) + ([f"--only {','.join(only)}"] if set(only) != set(SECTIONS) else [])
    # Quoted whenever the value has a space, so the command can be pasted as it stands.
    value = " ".join(flags)
    command = "make bench" + ((f' BENCH_ARGS="{value}"' if " " in value else f" BENCH_ARGS={value}") if flags else "")
    write_doc(sections, command, now)
    missed = sum(line.count("**MISSED**") for rows in sections.values() for line in rows)
    met = sum(line.count(": met |") for rows in sections.values() for line in rows)
    print(f"targets: {met} met, {missed} missed")
    print(f"written to {os.path.relpath(DOC, ROOT)}")


if __name__ == "__main__":
    main()
