"""What a user sees when a dependency is broken: a broken workspace config, an unreachable
Postgres, an unreachable Kafka. Running services report it on /health, keep retrying and
recover by themselves; one-shot commands exit non-zero with a message that names the problem.

Usage: test_failures.py --case workspace|postgres|kafka|oneshot
"""
import argparse
import json
import socket
import subprocess
import threading
import time

import harness as h


class TcpProxy:
    """Forwards a local port to a target once `up()` is called; refuses connections before."""

    def __init__(self, target_port):
        self.port = h.free_port()
        self.target = target_port
        self.sock = None

    def up(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def health(p):
    status, body, _ = h.http("GET", p.url + "/health", timeout=5)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def deliver_one(env, p, sink, mid):
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1", messageId=mid),
                             write_key="e2e-write-key")
    assert status == 200, (status, body)
    h.wait_for(f"{mid} at the sink", lambda: mid in sink.message_ids(), timeout=60)


def case_workspace(env):
    sink = h.Sink(env)
    env.write_workspace('{"sources": [ {"id": "broken"')  # truncated JSON
    p = env.start("all", SLUICE_KAFKA_BROKERS="")
    # Until the first attempt to read the file, /health says it is not loaded yet.
    h.wait_for("/health to name the broken file", lambda: env.ws_path in json.dumps(health(p)[1]),
               timeout=30)
    status, body = health(p)
    assert status == 503 and not body["checks"]["workspace"]["ok"], (status, body)
    detail = body["checks"]["workspace"]["detail"]
    h.log(f"/health says: {detail}")
    assert env.ws_path in detail, detail
    status, resp, _ = h.http("POST", p.url + "/v1/track", h.track("u1"),
                             write_key="e2e-write-key")
    assert status == 503, (status, resp)
    assert p.alive()
    env.write_workspace(h.workspace_config(sink.url))  # the user fixes the file
    env.wait_healthy(p, timeout=30)
    deliver_one(env, p, sink, "after-fix")
    # A broken new version is refused; the previous one stays in use.
    env.write_workspace("not json at all")
    h.wait_for("/health to report the broken version", lambda: health(p)[0] == 503, timeout=30)
    deliver_one(env, p, sink, "while-broken")
    assert p.stop() == 0


def case_postgres(env):
    real_port = int(dict(kv.split("=", 1) for kv in h.pg_dsn().split())["port"])
    proxy = TcpProxy(real_port)
    dsn = env.dsn.replace(f"port={real_port}", f"port={proxy.port}")
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("all", SLUICE_KAFKA_BROKERS="", SLUICE_POSTGRES_DSN=dsn)
    h.wait_for("/health to report postgres",
               lambda: "postgres" in health(p)[1].get("checks", {}), timeout=30)
    status, body = health(p)
    assert status == 503, (status, body)
    detail = body["checks"]["postgres"]["detail"]
    h.log(f"/health says: {detail}")
    assert str(proxy.port) in detail and "SLUICE_POSTGRES_DSN" in detail, detail
    # The gateway keeps accepting: events wait in Kafka for the router.
    status, resp, _ = h.http("POST", p.url + "/v1/track", h.track("u1", messageId="pg-down"),
                             write_key="e2e-write-key")
    assert status == 200, (status, resp)
    proxy.up()  # Postgres comes back
    env.wait_healthy(p, timeout=60)
    h.wait_for("the event at the sink", lambda: "pg-down" in sink.message_ids(), timeout=60)
    rows = h.wait_for("its job row", lambda: h.psql(
        env.dsn, "SELECT state FROM sluice_jobs WHERE message_id = 'pg-down'"), timeout=30)
    assert rows[0][0] == "succeeded", rows
    assert p.stop() == 0


def case_kafka(env):
    dk = h.Proc("dev-kafka", [h.SLUICE, "dev-kafka", "--brokers", "1", "--control-port",
                              str(h.free_port())], env.base_env(), env.workdir)
    env.procs.append(dk)
    brokers = h.wait_for("dev-kafka bootstrap", lambda: next(
        (l for l in dk.output().splitlines() if "127.0.0.1:" in l and "control" not in l
         and " " not in l.strip()), None), timeout=30)
    control = None
    for line in dk.output().splitlines():
        if "control:" in line:
            control = line.split("control:", 1)[1].strip().split()[0]
    assert control, dk.output()
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("gateway", SLUICE_KAFKA_BROKERS=brokers.strip(),
                  SLUICE_GATEWAY_ACK_TIMEOUT="2s")
    env.wait_healthy(p)
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1"), write_key="e2e-write-key")
    assert status == 200, (status, body)
    status, body, _ = h.http("POST", control.rstrip("/") + "/brokers/1/down", b"")
    assert status == 200, (status, body)
    t0 = time.time()
    status, body, headers = h.http("POST", p.url + "/v1/track", h.track("u1"),
                                   write_key="e2e-write-key")
    took = time.time() - t0
    h.log(f"with the broker down: {status} {body[:200]} after {took:.1f}s")
    assert status == 503 and "Retry-After" in headers, (status, body, headers)
    assert took < 10, took
    h.wait_for("/health to report kafka", lambda: health(p)[0] == 503, timeout=30)
    h.log(f"/health says: {health(p)[1]}")
    status, body, _ = h.http("POST", control.rstrip("/") + "/brokers/1/up", b"")
    assert status == 200, (status, body)
    ok = h.wait_for("a 200 after the broker is back", lambda: h.http(
        "POST", p.url + "/v1/track", h.track("u1"), write_key="e2e-write-key")[0] == 200,
        timeout=60, interval=0.5)
    assert ok
    env.wait_healthy(p, timeout=30)

    # The other faults the dev broker injects: retriable produce errors and latency.
    status, body, _ = h.http("GET", control)
    info = json.loads(body)
    assert status == 200 and info["brokers"] == 1 and info["bootstraps"] == brokers.strip(), info
    status, body, _ = h.http("POST", control.rstrip("/") +
                             "/errors?api=Produce&error=NOT_ENOUGH_REPLICAS&count=3", b"")
    assert status == 200, (status, body)
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1"), write_key="e2e-write-key")
    assert status == 200, (status, body)  # librdkafka retried past the injected errors
    status, body, _ = h.http("POST", control.rstrip("/") + "/errors?api=Nope&error=X", b"")
    assert status == 400 and b"api must be" in body, (status, body)
    status, body, _ = h.http("POST", control.rstrip("/") + "/brokers/1/rtt?ms=400", b"")
    assert status == 200, (status, body)
    t0 = time.time()
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1"), write_key="e2e-write-key")
    took = time.time() - t0
    h.log(f"with 400 ms broker latency: {status} after {took * 1000:.0f} ms")
    assert status == 200 and took >= 0.4, (status, took)
    assert p.stop() == 0


def case_kafka_idle(env):
    """/health turns healthy again once the brokers are back, with no event to show it."""
    dk = h.DevKafka(env, brokers=1)
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("all", SLUICE_KAFKA_BROKERS=dk.bootstrap)
    env.wait_healthy(p)
    deliver_one(env, p, sink, "idle-before")
    dk.all_brokers("down")
    h.wait_for("/health to report the brokers down", lambda: not health(p)[1].get(
        "checks", {}).get("kafka_brokers", {"ok": True})["ok"], timeout=30)
    status, body = health(p)
    h.log(f"/health says: {body['checks']['kafka_brokers']['detail']}")
    assert status == 503 and dk.bootstrap in body["checks"]["kafka_brokers"]["detail"], body
    time.sleep(3)
    dk.all_brokers("up")
    t0 = time.time()
    env.wait_healthy(p, timeout=30)
    h.log(f"healthy {time.time() - t0:.1f} s after the broker came back, with no traffic")
    deliver_one(env, p, sink, "idle-after")
    assert p.stop() == 0


def case_oneshot(env):
    def run(args, **extra):
        e = env.base_env()
        e.update(extra)
        r = subprocess.run([h.SLUICE] + args, env=e, capture_output=True, text=True, timeout=60)
        h.log(f"sluice {' '.join(args)} -> {r.returncode}: {r.stderr.strip()[:300]}")
        return r
    dead = h.free_port()
    r = run(["migrate"], SLUICE_POSTGRES_DSN=f"host=127.0.0.1 port={dead} dbname=x user=x")
    assert r.returncode != 0 and str(dead) in r.stderr and "SLUICE_POSTGRES_DSN" in r.stderr
    r = run(["migrate"], SLUICE_POSTGRES_DSN=env.dsn)
    assert r.returncode == 0, r.stderr
    r = run(["config"], SLUICE_GATEWAY_PORT="eighty")
    assert r.returncode == 2 and "gateway.port" in r.stderr
    r = run(["gateway"], SLUICE_WORKSPACE_CONFIG="/x.json")
    assert r.returncode == 2 and "SLUICE_KAFKA_BROKERS" in r.stderr
    r = run(["router"], SLUICE_KAFKA_BROKERS="127.0.0.1:1", SLUICE_WORKSPACE_CONFIG="/x.json")
    assert r.returncode == 2 and "SLUICE_POSTGRES_DSN" in r.stderr
    r = run(["config"], SLUICE_POSTGRES_DSN="host=db password=hunter2")
    assert r.returncode == 0 and "hunter2" not in r.stdout and "password=****" in r.stdout
    r = run(["nosuchcommand"])
    assert r.returncode == 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["workspace", "postgres", "kafka", "kafka_idle", "oneshot"],
                    required=True)
    args = ap.parse_args()
    fn = globals()["case_" + args.case]
    h.run(fn, f"failures-{args.case}", kafka="embedded")


if __name__ == "__main__":
    main()
