"""End-to-end test harness: runs the `sluice` binary as a user would and talks HTTP to it.

Standard library only. Services come from the ctest fixtures (tests/CMakeLists.txt): the
test Postgres (SLUICE_TEST_PG_DSN[_FILE]) and the real Kafka
(SLUICE_TEST_KAFKA_BROKERS / SLUICE_TEST_KAFKA_BOOTSTRAP_FILE). Each test gets its own
database and its own topic prefix, so tests never see each other's data.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

SLUICE = os.environ.get("SLUICE_BIN", "sluice")
SOURCE_DIR = os.environ.get(
    "SLUICE_TEST_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def log(*args):
    print("[e2e]", *args, flush=True)


def fail(msg):
    log("FAIL:", msg)
    raise AssertionError(msg)


def service(direct, file_var):
    if os.environ.get(direct):
        return os.environ[direct]
    path = os.environ.get(file_var)
    if path and os.path.exists(path):
        with open(path) as f:
            return f.readline().strip()
    return None


def pg_dsn():
    dsn = service("SLUICE_TEST_PG_DSN", "SLUICE_TEST_PG_DSN_FILE")
    if not dsn:
        fail("no test Postgres: run under ctest (fixture `postgres`) or set SLUICE_TEST_PG_DSN")
    return dsn


def kafka_brokers():
    b = service("SLUICE_TEST_KAFKA_BROKERS", "SLUICE_TEST_KAFKA_BOOTSTRAP_FILE")
    if not b:
        fail("no test Kafka: run under ctest (fixture `kafka`) or set SLUICE_TEST_KAFKA_BROKERS")
    return b


_ports_given = set()


def free_port():
    """A port nothing listens on, never one this process handed out before: the kernel may
    give the same free port twice in a row, and two roles would then race for it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def psql(dsn, sql):
    """Runs sql with psql; returns rows as lists of strings (tab-separated, unaligned)."""
    out = subprocess.run(["psql", dsn, "-X", "-q", "-t", "-A", "-F", "\t", "-v",
                          "ON_ERROR_STOP=1", "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def fresh_database(base_dsn, name):
    """Creates database `name` (dropping an old one) and returns a DSN pointing at it."""
    psql(base_dsn, f'DROP DATABASE IF EXISTS "{name}"')
    psql(base_dsn, f'CREATE DATABASE "{name}"')
    return f"{base_dsn} dbname={name}"


def http(method, url, body=None, write_key=None, headers=None, timeout=30):
    """Returns (status, body bytes, headers). Never raises for HTTP errors."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if write_key is not None:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{write_key}:".encode()).decode())
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
    except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
        return 0, str(e).encode(), {}


def wait_for(what, fn, timeout=30, interval=0.1):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process with its output in a log file that is printed if the test fails."""

    def __init__(self, name, args, env, workdir):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.logf = open(self.log_path, "ab")
        self.p = subprocess.Popen(args, env=env, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self, timeout=60):
        """SIGTERM, wait; SIGKILL if it does not exit. Returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within {timeout}s of SIGTERM; killing it")
            self.p.kill()
            self.p.wait()
            fail(f"{self.name} did not stop within {timeout}s of SIGTERM")

    def kill(self):
        if self.alive():
            self.p.kill()
        self.p.wait()

    def output(self):
        self.logf.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class Sink:
    """`sluice dev-sink`: a local HTTP destination that records what it receives."""

    def __init__(self, env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(f"sink-{self.port}",
                         [SLUICE, "dev-sink", "--port", str(self.port), "--out",
                          os.path.join(env.workdir, f"sink-{self.port}.jsonl")],
                         env.base_env(), env.workdir)
        env.procs.append(self.proc)
        wait_for("the dev sink", lambda: http("GET", self.url + "/_sink/stats")[0] == 200)

    def requests(self):
        status, body, _ = http("GET", self.url + "/_sink/requests")
        if status != 200:
            fail(f"dev sink answered {status}: {body[:200]}")
        return json.loads(body)

    def events(self):
        """The JSON bodies received, parsed."""
        out = []
        for r in self.requests():
            try:
                out.append(json.loads(r["body"]))
            except ValueError:
                pass
        return out

    def message_ids(self):
        return [e.get("messageId") for e in self.events()]

    def set_mode(self, **mode):
        status, body, _ = http("POST", self.url + "/_sink/mode", mode)
        if status != 200:
            fail(f"dev sink mode: {status} {body[:200]}")


def workspace_config(sink_url, write_key="e2e-write-key", extra_sources=()):
    return {
        "workspaceId": "e2e-workspace",
        "sources": [{
            "id": "src-e2e",
            "name": "e2e source",
            "writeKey": write_key,
            "enabled": True,
            "sourceDefinition": {"name": "HTTP", "category": "eventStream"},
            "destinations": [{
                "id": "dst-webhook",
                "name": "e2e webhook",
                "enabled": True,
                "config": {"webhookUrl": sink_url + "/webhook", "webhookMethod": "POST",
                           "headers": [{"from": "X-Test", "to": "e2e"}]},
                "destinationDefinition": {
                    "name": "WEBHOOK", "displayName": "Webhook",
                    "config": {"supportedMessageTypes":
                               ["track", "identify", "page", "screen", "group", "alias"]}},
            }],
        }] + list(extra_sources),
    }


class Env:
    """One test's world: a temp dir, a database, a topic prefix, and the processes started."""

    def __init__(self, name, kafka="real", need_pg=True):
        self.name = name
        self.workdir = tempfile.mkdtemp(prefix=f"sluice-e2e-{name}-")
        self.procs = []
        self.prefix = f"e2e-{name}-{uuid.uuid4().hex[:8]}."
        self.kafka = kafka
        self.brokers = kafka_brokers() if kafka == "real" else ""
        self.dsn = fresh_database(pg_dsn(), "e2e_" + name.replace("-", "_")) if need_pg else ""
        self.ws_path = os.path.join(self.workdir, "workspaceConfig.json")
        self.ok = False

    def base_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env["SLUICE_LOG_LEVEL"] = os.environ.get("SLUICE_E2E_LOG_LEVEL", "info")
        return env

    def write_workspace(self, cfg):
        tmp = self.ws_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=1))
        os.replace(tmp, self.ws_path)

    def sluice_env(self, **overrides):
        env = self.base_env()
        env.update({
            "SLUICE_KAFKA_BROKERS": self.brokers,
            "SLUICE_KAFKA_TOPIC_PREFIX": self.prefix,
            "SLUICE_KAFKA_PARTITIONS": "4",
            "SLUICE_POSTGRES_DSN": self.dsn,
            "SLUICE_WORKSPACE_CONFIG": self.ws_path,
            "SLUICE_WORKSPACE_POLL_INTERVAL": "200ms",
            "SLUICE_GATEWAY_HOST": "127.0.0.1",
            "SLUICE_GATEWAY_PORT": str(free_port()),
            "SLUICE_PROCESSOR_PORT": str(free_port()),
            "SLUICE_ROUTER_PORT": str(free_port()),
            "SLUICE_ROUTER_RETRY_BASE": "200ms",
            "SLUICE_GATEWAY_THREADS": "4",
            # Short linger: the tests measure latency, not throughput.
            "SLUICE_KAFKA_LINGER_MS": "1",
        })
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def start(self, role="all", name=None, **overrides):
        env = self.sluice_env(**overrides)
        p = Proc(name or role, [SLUICE, role], env, self.workdir)
        p.env = env
        p.port = int(env["SLUICE_GATEWAY_PORT"] if role in ("all", "gateway")
                     else env[f"SLUICE_{role.upper()}_PORT"])
        p.url = f"http://127.0.0.1:{p.port}"
        self.procs.append(p)
        return p

    def wait_healthy(self, p, timeout=60):
        def check():
            if not p.alive():
                fail(f"{p.name} exited with {p.p.returncode}:\n{p.output()[-4000:]}")
            return http("GET", p.url + "/health", timeout=5)[0] == 200
        wait_for(f"{p.name} /health to answer 200", check, timeout)

    def close(self):
        for p in self.procs:
            p.kill()
        if not self.ok:
            for p in self.procs:
                log(f"---- output of {p.name} (last 6000 chars) ----")
                sys.stdout.write(p.output()[-6000:])
            log(f"work dir kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run(test_fn, name, **env_args):
    """Runs test_fn(env) in a fresh Env and exits with the test's verdict."""
    env = Env(name, **env_args)
    try:
        test_fn(env)
        env.ok = True
        log(f"PASS {name}")
    finally:
        env.close()


def track(user, event="Signed Up", **fields):
    ev = {"userId": user, "event": event, "properties": {"plan": "pro"}}
    ev.update(fields)
    return ev


# ---- Kafka helpers for tests that look inside topics or break brokers ----

def kafka_messages(brokers, topic, timeout=60):
    """Every message of `topic` from the beginning, read with kcat (-J): a list of dicts with
    partition, offset, ts (the Kafka timestamp, ms), key (str or None), value (str or None) and
    headers (dict of str)."""
    r = subprocess.run(["kcat", "-C", "-b", brokers, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-J", "-X", "topic.metadata.refresh.interval.ms=1000"],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        fail(f"kcat could not read {topic} from {brokers} (exit {r.returncode}): "
             f"{r.stderr.strip()[-600:]}")
    out = []
    for line in r.stdout.splitlines():
        if not line.startswith("{"):
            continue
        m = json.loads(line)
        hdrs = m.get("headers") or []
        out.append({"partition": m.get("partition"), "offset": m.get("offset"),
                    "ts": m.get("ts"), "key": m.get("key"), "value": m.get("payload"),
                    "headers": dict(zip(hdrs[0::2], hdrs[1::2]))})
    return out


def create_topics(env, suffixes=("events", "delivery", "failed", "warehouse")):
    """Creates the pipeline's topics on the real Kafka before any role subscribes
    (auto-created by a metadata request, the broker's default partition count), and waits
    until each has a leader for every partition, so the test does not depend on the roles'
    own creation of them."""
    topics = [env.prefix + t for t in suffixes]
    for t in topics:
        subprocess.run(["kcat", "-L", "-b", env.brokers, "-t", t,
                        "-X", "allow.auto.create.topics=true"],
                       capture_output=True, text=True, timeout=30)

    def ready():
        r = subprocess.run(["kcat", "-L", "-J", "-b", env.brokers], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            return False
        md = {t.get("topic"): t for t in json.loads(r.stdout).get("topics", [])}
        return all(t in md and not md[t].get("error") and md[t].get("partitions") and
                   all(p.get("leader", -1) >= 0 for p in md[t]["partitions"]) for t in topics)
    wait_for("the pipeline's topics", ready, timeout=30, interval=0.2)


def kafka_events(brokers, topic, timeout=60):
    """The JSON events in `topic` (see kafka_messages), each with "_kafka" = the message
    without its value (partition, offset, key, headers)."""
    out = []
    for m in kafka_messages(brokers, topic, timeout):
        try:
            ev = json.loads(m["value"])
        except (TypeError, ValueError):
            fail(f"not JSON in {topic} at {m['partition']}/{m['offset']}: {m['value']!r:.200}")
        ev["_kafka"] = {k: v for k, v in m.items() if k != "value"}
        out.append(ev)
    return out


class DevKafka:
    """`sluice dev-kafka`: the embedded mock cluster, with its fault-injection control API."""

    def __init__(self, env, brokers=1, partitions=4):
        self.n = brokers
        e = env.base_env()
        e["SLUICE_KAFKA_TOPIC_PREFIX"] = env.prefix
        self.proc = Proc(f"dev-kafka-{len(env.procs)}",
                         [SLUICE, "dev-kafka", "--brokers", str(brokers), "--partitions",
                          str(partitions), "--control-port", str(free_port())], e, env.workdir)
        env.procs.append(self.proc)

        def bootstrap():
            if not self.proc.alive():
                fail(f"dev-kafka exited:\n{self.proc.output()[-2000:]}")
            return next((l.strip() for l in self.proc.output().splitlines()
                         if l.startswith("127.0.0.1:") and " " not in l.strip()), None)
        self.bootstrap = wait_for("dev-kafka bootstrap", bootstrap, timeout=30)
        self.control = wait_for("dev-kafka control URL", lambda: next(
            (l.split("control:", 1)[1].strip().split()[0].rstrip("/")
             for l in self.proc.output().splitlines() if "control:" in l), None), timeout=30)

    def broker(self, broker_id, action):
        """action: "down" or "up"."""
        status, body, _ = http("POST", f"{self.control}/brokers/{broker_id}/{action}", b"")
        if status != 200:
            fail(f"dev-kafka control: broker {broker_id} {action}: {status} {body[:200]}")

    def all_brokers(self, action):
        for i in range(1, self.n + 1):
            self.broker(i, action)


def kafka_local(*args, timeout=180):
    """Runs scripts/kafka-local with args; returns the CompletedProcess (never raises)."""
    return subprocess.run([os.path.join(SOURCE_DIR, "scripts", "kafka-local")] + list(args),
                          capture_output=True, text=True, timeout=timeout)


def iso_ms(s):
    """Milliseconds since the epoch of an RFC 3339 time such as 2026-11-26T10:00:00.123Z."""
    from datetime import datetime
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)
