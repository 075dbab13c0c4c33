"""The audit chain under crashes and concurrent writers (scenarios 10, 11)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

from lib import OUT, Admin, Stack, check, factory_cli, log, service, wait_until


def _signing_env() -> tuple[dict, str]:
    """An RSA key for signed events and checkpoints (every 25 events), and its public half."""
    key = os.path.join(OUT, "audit-key.pem")
    pub = os.path.join(OUT, "audit-key.pub.pem")
    if not os.path.exists(pub):
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", key], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True,
                       capture_output=True)
    env = {"AUDIT_SIGNING_KEY_FILE": key, "AUDIT_SIGNING_KEY_ID": "chaos-1", "AUDIT_SIGN_EVENTS": "true",
           "AUDIT_CHECKPOINT_EVERY": "25", "AUDIT_CHECKPOINT_INTERVAL_SEC": "2"}
    return env, pub


class Load:
    """Threads creating API keys (each one audited) against some factories until stopped."""

    def __init__(self, admins: list[Admin], threads_each: int = 6):
        self.stop = threading.Event()
        self.created = 0
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(a,), daemon=True)
                         for a in admins for _ in range(threads_each)]
        for t in self._threads:
            t.start()

    def _run(self, admin: Admin) -> None:
        while not self.stop.is_set():
            try:
                r = admin.call("POST", "/v1/api-keys", {"name": f"chaos-{uuid.uuid4().hex[:8]}"}, timeout=10)
                key = str(r.status)
            except OSError as e:
                key = type(e).__name__
            with self._lock:
                if key == "201":
                    self.created += 1
                else:
                    self.errors[key] = self.errors.get(key, 0) + 1

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(15)


def _verify(env: dict, pub: str) -> str:
    r = factory_cli(["audit", "verify", "--public-key", f"chaos-1={pub}"], env, timeout=120)
    check(r.returncode == 0 and "audit chain intact" in r.stdout,
          f"audit verify exit {r.returncode}: {(r.stdout + r.stderr)[-600:]}")
    return r.stdout.strip().splitlines()[-1]


def _audited_keys(stack: Stack, db: str) -> tuple[int, int]:
    keys = int(stack.pg.sql("SELECT count(*) FROM api_keys", db))
    events = int(stack.pg.sql("SELECT count(*) FROM audit_events WHERE action = 'api_key.created'", db))
    return keys, events


def killed_mid_append(stack: Stack) -> str:
    """10. The factory killed -9 in the middle of audit appends under load: the chain is intact."""
    db_name = "chaos_s10"
    db = stack.pg.fresh_db(db_name)
    signing, pub = _signing_env()
    env = stack.env(db, "s10", **signing)
    factory = service("s10-factory", "factory-service", env)
    load = Load([Admin(factory.port)], threads_each=8)
    wait_until("50 audited API keys", lambda: load.created >= 50, 60, 0.1)
    factory.proc.kill9()
    killed_at = load.created
    load.finish()
    log(f"factory killed -9 after {killed_at} key creations under load")
    keys_at_kill, events_at_kill = _audited_keys(stack, db_name)
    first = _verify(env, pub)
    factory2 = service("s10-factory2", "factory-service", env)
    load2 = Load([Admin(factory2.port)], threads_each=4)
    wait_until("40 more keys after the restart", lambda: load2.created >= 40, 60, 0.1)
    load2.finish()
    keys, events = _audited_keys(stack, db_name)
    after = _verify(env, pub)
    api = Admin(factory2.port).call("GET", "/v1/audit/verify").json()
    check(api.get("ok") is True, f"GET /v1/audit/verify: {api}")
    check(keys == events, f"{keys} API keys but {events} api_key.created audit events")
    check(keys_at_kill == events_at_kill, f"at the kill: {keys_at_kill} keys, {events_at_kill} events")
    return (f"killed -9 with 8 writers busy ({killed_at} keys answered 201, {keys_at_kill} committed, "
            f"each with its audit event); `audit verify` after the crash: {first}; after restart and "
            f"{load2.created} more: {after}; API verify ok")


def two_writers(stack: Stack) -> str:
    """11. Two factory instances appending at once build one chain."""
    db_name = "chaos_s11"
    db = stack.pg.fresh_db(db_name)
    signing, pub = _signing_env()
    env = stack.env(db, "s11", **signing)
    a = service("s11-factory-a", "factory-service", env)
    b = service("s11-factory-b", "factory-service", env)
    load = Load([Admin(a.port, "chaos-device-aaaaaaaaaa"), Admin(b.port, "chaos-device-bbbbbbbbbb")],
                threads_each=5)
    time.sleep(8)
    load.finish()
    keys, events = _audited_keys(stack, db_name)
    seqs = stack.pg.sql("SELECT count(*), min(seq), max(seq) FROM audit_events", db_name)
    n, lo, hi = (int(x) for x in seqs.split("|"))
    verdict = _verify(env, pub)
    check(load.created >= 20, f"only {load.created} keys created ({load.errors})")
    check(keys == events == load.created, f"{load.created} created, {keys} keys, {events} audit events")
    check(hi - lo + 1 == n, f"seq {lo}..{hi} holds {n} events: gaps")
    return (f"two instances, 10 writers for 8s: {load.created} keys, {events} api_key.created events, "
            f"seq {lo}..{hi} without gaps ({n} events); {verdict}"
            + (f"; non-201: {load.errors}" if load.errors else ""))


SCENARIOS = [
    (10, "Factory killed -9 mid audit appends", killed_mid_append),
    (11, "Two factory instances appending", two_writers),
]
