"""Property-based fuzzing of the scan route (scenario 16): random bytes, lengths and encodings as
tag ids and header values, sent on raw sockets. Property: never a 5xx, the process never dies,
and valid tag ids still answer 200 afterwards."""

from __future__ import annotations

import os
import random
import socket
import string
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_from_bytes

from lib import Admin, Fail, Stack, check, service

TAG_CHARS = string.ascii_letters + string.digits + "_-"


def _tag_id(rng: random.Random, real: str) -> bytes:
    kind = rng.randrange(9)
    n = rng.choice([0, 1, 15, 16, 17, 63, 64, 65, rng.randrange(300), rng.randrange(5000)])
    if kind == 0:  # the right alphabet, any length
        return "".join(rng.choice(TAG_CHARS) for _ in range(n)).encode()
    if kind == 1:  # arbitrary bytes, percent-encoded
        return quote_from_bytes(rng.randbytes(n), safe="").encode()
    if kind == 2:  # arbitrary bytes, raw (not valid HTTP)
        return rng.randbytes(n).replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    if kind == 3:  # unicode look-alikes and combining marks, UTF-8 percent-encoded
        s = "".join(rng.choice("аеорсху０１ℌ\u0301\u200b\ufeffé_-Aa9") for _ in range(n % 80))
        return quote_from_bytes(s.encode(), safe="").encode()
    if kind == 4:  # a real tag id, mangled
        t = bytearray(real.encode())
        for _ in range(rng.randrange(1, 4)):
            t[rng.randrange(len(t))] = rng.choice(b"%/.\\\x00\x7f?#;")
        return bytes(t)
    if kind == 5:  # traversal and encodings of slashes and NULs
        return rng.choice([b"..%2f..%2fetc%2fpasswd", b"%00" * 20, b"%2e%2e", b"%ZZ", b"%",
                           b"%c0%af" * 10, real.encode() + b"%00", real.encode() + b"/extra"])
    if kind == 6:  # double encoding
        return quote_from_bytes(quote_from_bytes(rng.randbytes(n % 64), safe="").encode(), safe="").encode()
    if kind == 7:
        return real.encode()
    return real.encode() + b"?" + quote_from_bytes(rng.randbytes(n % 200)).encode()


def _header_value(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 16, 64, 255, 256, 257, rng.randrange(2000), rng.randrange(9000)])
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice(string.printable.strip()) for _ in range(n)).encode()
    if kind == 1:
        return bytes(rng.randrange(0x80, 0x100) for _ in range(n))
    if kind == 2:
        return rng.randbytes(n).replace(b"\r", b"").replace(b"\n", b"")
    return rng.choice([b"1.2.3.4, 5.6.7.8", b"::1", b"999.1.1.1", b"fe80::1%eth0", b"unknown",
                       b", , ,", b"127.0.0.1" * 100, b"vk_" + b"A" * 60])


def _request(rng: random.Random, port: int, real: str) -> tuple[str, bytes]:
    path = b"/v1/scan/" + _tag_id(rng, real)
    headers = [b"Host: 127.0.0.1"]
    for name in (b"X-API-Key", b"X-Forwarded-For", b"X-Request-ID", b"User-Agent", b"X-API-Key"):
        if rng.random() < 0.35:
            headers.append(name + b": " + _header_value(rng))
    raw = b"GET " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(raw)
            data = b""
            while len(data) < 64:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "reset", raw
    except socket.timeout:
        return "timeout", raw
    parts = data.split(b" ", 2)
    return (parts[1].decode() if len(parts) > 1 and data.startswith(b"HTTP/") else "closed"), raw


def scan_fuzz(stack: Stack) -> str:
    """16. Random tag ids and headers at the scan route: no 5xx, no crash."""
    count = int(os.environ.get("CHAOS_FUZZ_REQUESTS", "4000"))
    seed = int(os.environ.get("CHAOS_FUZZ_SEED", str(int(time.time()))))
    db_name = "chaos_s16"
    env = stack.env(stack.pg.fresh_db(db_name), "s16", RATE_LIMIT_IP_PER_MINUTE=10_000_000,
                    RATE_LIMIT_IP_BURST=10_000_000)
    stack.setup_topics(env)
    factory = service("s16-factory", "factory-service", env)
    (real,) = Admin(factory.port).tags(1)
    scan = service("s16-scan", "scan-service", env)
    rngs = [random.Random(seed * 1000 + i) for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: _request(r, scan.port, real), rngs))
    tally: dict[str, int] = {}
    for status, _ in results:
        tally[status] = tally.get(status, 0) + 1
    bad = [(s, raw) for s, raw in results if s.startswith("5") or s == "timeout"]
    check(scan.proc.alive(), f"scan-service died (seed {seed}): {scan.proc.output()[-800:]}")
    if bad:
        raise Fail(f"{len(bad)} bad answers (seed {seed}), first: {bad[0][0]} to {bad[0][1][:300]!r}")
    panics = scan.proc.output().count("panicked")
    check(panics == 0, f"{panics} panics in the log (seed {seed})")
    check(scan.get(f"/v1/scan/{real}").status == 200, "a valid scan after the fuzzing was not 200")
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(tally.items()))
    return (f"{count} requests (seed {seed}; CHAOS_FUZZ_SEED reproduces): {summary}; no 5xx, no "
            f"timeout, no panic; the service still answers 200 for a real tag")


SCENARIOS = [(16, "Fuzzed tag ids and headers at the scan route", scan_fuzz)]
