"""Shared pieces of the benchmark suite: processes, HTTP timing, statistics, Prometheus parsing."""

from __future__ import annotations

import http.client
import math
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Where cargo put the release builds: CARGO_TARGET_DIR when set, as for cargo.
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
# Logs and generated scripts stay in the checkout's target/, which may not exist then.
os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:5432/voketag_test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql: str, db_url: str = PG_ADMIN) -> str:
    out = subprocess.run(["psql", db_url, "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def db_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def fresh_database(name: str) -> str:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{name}"')
    url = db_url(name)
    subprocess.run([os.path.join(RELEASE, "factory-service"), "migrate"], check=True,
                   env={**os.environ, "DATABASE_URL": url, "RUST_LOG": "warn", "APP_ENV": "development"},
                   stdout=subprocess.DEVNULL)
    return url


@dataclass
class Service:
    """A service binary running in the background, stopped with SIGTERM."""
    name: str
    env: dict
    args: list = field(default_factory=list)
    # The executable; default the release build of `name`.
    binary: str | None = None
    # Its log in target/; default bench-<name>.log.
    log: str = ""
    proc: subprocess.Popen | None = None
    port: int = 0

    def start(self) -> "Service":
        self.port = free_port()
        env = {**os.environ, "BIND_ADDR": f"127.0.0.1:{self.port}", "RUST_LOG": "warn",
               "LOG_FORMAT": "json", **self.env}
        self.log = self.log or f"bench-{self.name}.log"
        log = open(os.path.join(ROOT, "target", self.log), "w")
        self.proc = subprocess.Popen([self.binary or os.path.join(RELEASE, self.name), *self.args], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if get(self.port, "/healthz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"{self.name} did not start; see target/{self.log}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit code (negative: killed by that signal)."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(f"unreadable wrk latency {value!r}")
    n, unit = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000}[unit]


def wrk(url: str, connections: int, seconds: int, script: str | None = None, threads: int = 2) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    try:
        return _parse_wrk(out)
    except (AttributeError, ValueError) as e:
        raise RuntimeError(f"could not read wrk's output ({e}):\n{out}") from e


def _parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # Anchored to the start of a line: the thread-stats table's "+/- Stdev" column (e.g. "89.50%")
    # would otherwise match too.
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in errs.groups()) if errs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(rps, p50, p99, errors, int(non2xx.group(1)) if non2xx else 0)


def welch_t(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    return (ma - mb) / math.sqrt(va / len(a) + vb / len(b))


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def histogram_quantiles(metrics_text: str, name: str, qs: tuple[float, ...]) -> dict[float, float]:
    """Quantiles of a Prometheus histogram (summed over label sets), interpolated in buckets."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(name + "_bucket"):
            continue
        le = re.search(r'le="([^"]+)"', line).group(1)
        bound = math.inf if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0) + float(line.rsplit(" ", 1)[1])
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0)
    out = {}
    for q in qs:
        rank, prev_bound, prev_count = q * total, 0.0, 0.0
        out[q] = float("nan")
        for b in bounds:
            c = buckets[b]
            if c >= rank and total > 0:
                if math.isinf(b):
                    out[q] = prev_bound
                else:
                    frac = 0 if c == prev_count else (rank - prev_count) / (c - prev_count)
                    out[q] = prev_bound + (b - prev_bound) * frac
                break
            prev_bound, prev_count = b, c
    return out


def ensure_topic(topic: str, project: str = "voketag-local", emulator: str = "127.0.0.1:8085") -> None:
    """Creates a topic on the emulator (REST), so published events have somewhere to go."""
    host, port = emulator.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("PUT", f"/v1/projects/{project}/topics/{topic}", body=b"{}",
                     headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status not in (200, 409):
            raise RuntimeError(f"creating topic {topic}: HTTP {r.status}")
    finally:
        conn.close()
