"""Shared pieces of the chaos suite: processes, private dependencies, HTTP, waiting with deadlines.

Every dependency a scenario breaks is private to this suite (its own Redis, PostgreSQL cluster and
Pub/Sub emulator on free loopback ports), so the shared services on the standard ports that other
work relies on are never touched.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Where cargo put the binaries `scripts/chaos.sh` built: CARGO_TARGET_DIR when set, as for cargo.
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
BIN = os.path.join(TARGET, "debug")
OUT = os.path.join(ROOT, "target", "chaos")
PG_BIN = os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin")
EMULATOR_BIN = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
PROJECT = "voketag-chaos"
ADMIN_EMAIL = "chaos-admin@voketag.local"
ADMIN_PASSWORD = "chaos-admin-password-1"
DEVICE = "chaos-device-0000000001"


class Fail(Exception):
    """A scenario's expectation did not hold; the message says what was seen."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(what: str, fn, timeout: float, interval: float = 0.2):
    """Polls `fn` until it returns something truthy; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        time.sleep(interval)
    raise Fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------------------------
# Processes

_PROCS: list["Proc"] = []


class Proc:
    """A child process with its output in target/chaos/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, session: bool = False):
        os.makedirs(OUT, exist_ok=True)
        self.name = name
        self.log_path = os.path.join(OUT, f"{name}.log")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=session)
        self.session = session
        _PROCS.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            if self.session:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def output(self) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()


def stop_started_since(mark: int) -> None:
    """Stops every process started after `mark` (an index into the process list), newest first."""
    while len(_PROCS) > mark:
        p = _PROCS.pop()
        try:
            p.stop(timeout=10)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass


def procs_mark() -> int:
    return len(_PROCS)


atexit.register(lambda: stop_started_since(0))


# ---------------------------------------------------------------------------------------------
# Private dependencies


class PrivateRedis:
    """A redis-server of our own: stopped, paused and restarted without touching anybody else's."""

    def __init__(self, name: str = "redis"):
        self.name = name
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "PrivateRedis":
        self.proc = Proc(self.name, ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--daemonize", "no"])
        wait_until(f"{self.name} on :{self.port}", lambda: self.cli("PING") == "PONG", 15)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.kill9()

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip()


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (run as the postgres user when we are root)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="voketag-chaos-pg-")
        self.data = os.path.join(self.dir, "data")
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        atexit.register(self.destroy)

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120)

    def init(self) -> "PrivatePostgres":
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        return self.start()

    def start(self) -> "PrivatePostgres":
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c max_connections=300")
        self._run(os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-o", opts, "-l",
                  os.path.join(self.dir, "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        self._run(os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self.stop()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(["psql", self.url(db), "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise Fail(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def fresh_db(self, name: str) -> str:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        factory_cli(["migrate"], {"DATABASE_URL": url})
        return url


def emulator_command() -> str:
    for sdk in ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk",
                os.environ.get("CLOUDSDK_ROOT_DIR", "")):
        path = os.path.join(sdk, EMULATOR_BIN)
        if sdk and os.access(path, os.X_OK):
            return path
    raise Fail("the Pub/Sub emulator is not installed (apt-get install -y google-cloud-cli-pubsub-emulator)")


class PrivateEmulator:
    """A Pub/Sub emulator of our own (state is in memory: a restart forgets topics and messages)."""

    def __init__(self):
        self.port = free_port()
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "PrivateEmulator":
        self.starts += 1
        self.proc = Proc(f"emulator-{self.starts}", [emulator_command(), "--host=127.0.0.1",
                                                     f"--port={self.port}"], session=True)
        wait_until("the Pub/Sub emulator", lambda: "Server started" in self.proc.output(), 90, 0.3)
        wait_until("the emulator port", lambda: port_open(self.port), 10)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.kill9()

    def publish(self, topic: str, messages: list[tuple[bytes, dict]]) -> None:
        """Publishes straight through the emulator's REST gateway (at most 1000 per call)."""
        for i in range(0, len(messages), 1000):
            body = {"messages": [{"data": base64.b64encode(d).decode(), "attributes": a}
                                 for d, a in messages[i:i + 1000]]}
            r = request(self.port, "POST", f"/v1/projects/{PROJECT}/topics/{topic}:publish", body=body,
                        timeout=60)
            check(r.status == 200, f"emulator publish answered {r.status}: {r.body[:200]!r}")


@dataclass
class Stack:
    """The private dependencies of one chaos run."""
    pg: PrivatePostgres
    redis: PrivateRedis
    emulator: PrivateEmulator

    def pg_running(self) -> bool:
        return port_open(self.pg.port)

    def setup_topics(self, env: dict) -> None:
        """`factory-service pubsub setup` for this environment's topics (idempotent)."""
        r = factory_cli(["pubsub", "setup"], env)
        check(r.returncode == 0, f"pubsub setup failed: {r.stderr[-500:]}")

    def env(self, db_url: str, name: str, **extra) -> dict:
        """Environment for either service: its own database, key prefix and topics."""
        return {
            "APP_ENV": "development",
            "LOG_FORMAT": "json",
            "RUST_LOG": "info,sqlx=warn,h2=warn,hyper=warn,tower=warn",
            "DATABASE_URL": db_url,
            "REDIS_URL": self.redis.url,
            "REDIS_KEY_PREFIX": f"chaos{name}",
            "PUBSUB_EMULATOR_HOST": self.emulator.host,
            "PUBSUB_PROJECT_ID": PROJECT,
            "SCAN_EVENTS_TOPIC": f"scan-events-{name}",
            "SCAN_EVENTS_SUBSCRIPTION": f"factory-scan-events-{name}",
            "SCAN_EVENTS_DLQ_TOPIC": f"scan-events-dlq-{name}",
            "JWT_SECRET": "chaos-suite-jwt-secret-0123456789abcdef",
            "BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "IP_HASH_KEY": "chaos-suite-ip-hash-key",
            "SCAN_MIN_RESPONSE_MS": "0",
            "SCAN_JITTER_MS": "0",
            "ADMIN_RATE_LIMIT_RPS": "100000",
            "ADMIN_RATE_LIMIT_BURST": "100000",
            "TRUSTED_PROXIES": "127.0.0.1/32",
            **{k: str(v) for k, v in extra.items()},
        }


def factory_cli(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "factory-service"), *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "APP_ENV": "development", "RUST_LOG": "warn",
                               "LOG_FORMAT": "json", **env})


def service(name: str, binary: str, env: dict, args: list[str] | None = None, wait: bool = True) -> "Service":
    port = free_port()
    env = {**env, "BIND_ADDR": f"127.0.0.1:{port}"}
    if args and args[0] == "worker":
        args = [*args, "--metrics-addr", f"127.0.0.1:{port}"]
    p = Proc(name, [os.path.join(BIN, binary), *(args or [])], env)
    svc = Service(p, port)
    if wait:
        svc.wait_healthy()
    return svc


@dataclass
class Service:
    proc: Proc
    port: int

    def wait_healthy(self, timeout: float = 60) -> None:
        def up():
            check(self.proc.alive(), f"{self.proc.name} exited: {self.proc.output()[-1500:]}")
            return request(self.port, "GET", "/healthz", timeout=2).status == 200
        wait_until(f"{self.proc.name} /healthz", up, timeout)

    def get(self, path: str, **kw) -> "Resp":
        return request(self.port, "GET", path, **kw)

    def metrics(self) -> str:
        return request(self.port, "GET", "/metrics").body.decode()


# ---------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Resp:
    status: int
    headers: dict
    cookies: dict
    body: bytes
    elapsed: float

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers: dict | None = None, body=None,
            timeout: float = 30) -> Resp:
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        cookies = {}
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                cookies[name] = rest.split(";", 1)[0]
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        return Resp(r.status, hdrs, cookies, data, time.monotonic() - t0)
    finally:
        conn.close()


class Admin:
    """A signed-in admin of a factory instance."""

    def __init__(self, port: int, device: str = DEVICE):
        self.port = port
        self.device = device
        r = request(port, "POST", "/v1/auth/login", {"X-Device-ID": device},
                    {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        check(r.status == 200, f"login answered {r.status}: {r.body[:300]!r}")
        self.token = r.json()["access_token"]
        self.cookies = r.cookies

    def call(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30) -> Resp:
        h = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        return request(self.port, method, path, h, body, timeout)

    def tags(self, quantity: int) -> list[str]:
        p = self.call("POST", "/v1/products", {"name": "Chaos product", "sku": f"CH-{uuid.uuid4().hex[:10]}"})
        check(p.status == 201, f"create product answered {p.status}: {p.body[:200]!r}")
        b = self.call("POST", "/v1/batches", {"product_id": p.json()["id"], "quantity": quantity})
        check(b.status == 201, f"create batch answered {b.status}: {b.body[:200]!r}")
        csv = self.call("GET", f"/v1/batches/{b.json()['id']}/tags").body.decode()
        ids = [line.strip() for line in csv.splitlines() if line.strip()]
        check(len(ids) == quantity, f"batch CSV had {len(ids)} tag ids, expected {quantity}")
        return ids


def metric(text: str, series: str, /, **labels) -> float:
    """Sum of the series `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(series) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != series:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def scan_event(tag_id: str, event_id: str | None = None) -> tuple[bytes, dict]:
    """A well-formed scan event as the scan service would publish it."""
    body = {
        "event_id": event_id or str(uuid.uuid4()),
        "tag_id": tag_id,
        "result": "authentic",
        "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "client_ip_hash": "ab" * 32,
        "api_key_id": None,
        "user_agent": "chaos",
    }
    return json.dumps(body).encode(), {"event_type": "scan", "schema_version": "1"}


class TcpProxy:
    """A loopback TCP proxy in front of a dependency: `cut()` closes every connection and stops
    listening (callers see connection refused, as if the dependency were down); `heal()` listens
    again. The dependency itself keeps its state (the emulator forgets topics on a restart)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.heal()

    def heal(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
