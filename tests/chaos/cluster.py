"""The fault harness's world: its own three-node Kafka and Postgres, dev sinks, the Sluice roles
as separate processes, and the faults it can inject into each of them.

Uses tests/e2e/harness.py for processes (Proc), sinks (Sink), HTTP and the workspace config.
"""
import glob
import json
import os
import signal
import subprocess
import threading
import time

import harness as h

WRITE_KEY = "chaos-write-key"
ROUTER_TIMEOUT_MS = 3000  # router.timeout: a sink answer later than this is a timeout


def service_env():
    """The environment for scripts/kafka-local and scripts/pg-local: without the SLUICE_TEST_*
    variables that would make them hand out the shared test services instead of starting ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}


def script(name, *args, timeout=300):
    r = subprocess.run([os.path.join(h.SOURCE_DIR, "scripts", name)] + list(args),
                       env=service_env(), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/{name} {' '.join(args)} failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-1500:]}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


class Kafka:
    """A real three-node Apache Kafka (scripts/kafka-local: replication factor 3,
    min.insync.replicas 2; every node is broker and KRaft controller)."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "kafka")
        self.brokers = None
        self.starter = None

    def start_async(self):
        self.starter = subprocess.Popen(
            [os.path.join(h.SOURCE_DIR, "scripts", "kafka-local"), "start", "--dir", self.dir,
             "--nodes", "3"], env=service_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    def wait_started(self, timeout=240):
        out, err = self.starter.communicate(timeout=timeout)
        if self.starter.returncode != 0:
            raise RuntimeError(f"scripts/kafka-local start failed: {err.strip()[-1500:]}")
        self.brokers = out.strip().splitlines()[-1]
        return self.brokers

    def stop(self):
        if self.starter and self.starter.poll() is None:
            self.starter.kill()
            self.starter.wait()
        if os.path.isdir(self.dir):
            script("kafka-local", "stop", "--dir", self.dir, timeout=120)

    def metadata(self, topic=None):
        args = ["kcat", "-L", "-J", "-b", self.brokers, "-m", "10"]
        if topic:
            args += ["-t", topic]
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def controller(self):
        """The active KRaft controller (the metadata quorum's leader). The controller id in a
        Metadata response is not it: KRaft brokers answer with a random live broker there."""
        r = subprocess.run([os.path.join(h.SOURCE_DIR, "scripts", "kafka-local"), "tool",
                            "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server",
                            self.brokers, "describe", "--status"],
                           env=service_env(), capture_output=True, text=True, timeout=60)
        for line in r.stdout.splitlines():
            if line.startswith("LeaderId:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError(f"no LeaderId from MetadataQuorumCommand: {r.stdout[-500:]} "
                           f"{r.stderr[-500:]}")

    def leader(self, topic, partition=0):
        md = self.metadata(topic)
        for t in (md or {}).get("topics", []):
            for p in t.get("partitions", []):
                if t["topic"] == topic and p["partition"] == partition:
                    return p["leader"]
        return -1

    def under_replicated(self):
        """Partitions (of every topic) whose in-sync replicas are fewer than their replicas, or
        that have no leader; None if the metadata could not be read."""
        md = self.metadata()
        if md is None or len(md.get("brokers", [])) < 3:
            return None
        out = []
        for t in md.get("topics", []):
            for p in t.get("partitions", []):
                if p.get("leader", -1) < 0 or len(p.get("isrs", [])) < len(p.get("replicas", [])):
                    out.append(f"{t['topic']}/{p['partition']}")
        return out

    def wait_in_sync(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.under_replicated() == []:
                return True
            time.sleep(1)
        return False

    def kill(self, node):
        script("kafka-local", "kill-broker", "--dir", self.dir, "--node", str(node))

    def restart(self, node):
        script("kafka-local", "start-broker", "--dir", self.dir, "--node", str(node), timeout=240)


class Postgres:
    """A throwaway Postgres cluster of the harness's own (scripts/pg-local), restartable."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "pg")
        self.dsn = None

    def start(self):
        self.dsn = script("pg-local", "start", "--dir", self.dir, timeout=120)
        return self.dsn

    def stop(self):
        if os.path.isdir(self.dir):
            script("pg-local", "stop", "--dir", self.dir, timeout=120)

    def restart(self):
        """pg_ctl restart -m fast: every connection is cut; the server is back when it returns."""
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: [int(x) for x in p.split("/")[4].split(".") if x.isdigit()])[-1]
        cmd = [os.path.join(bindir, "pg_ctl"), "-D", os.path.join(self.dir, "data"), "-l",
               os.path.join(self.dir, "server.log"), "-m", "fast", "-w", "-t", "60", "restart"]
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {r.stderr.strip()[-800:]}")


def dsn_fields(dsn):
    return dict(part.split("=", 1) for part in dsn.split() if "=" in part)


class World:
    """Duck-types harness.Env for harness.Sink (workdir, procs, base_env)."""

    def __init__(self, workdir, prefix):
        self.workdir = workdir
        self.prefix = prefix
        self.procs = []
        self.roles = {}  # name -> Proc (the current incarnation)
        self.role_env = {}  # name -> (role, env)
        self.ws_path = os.path.join(workdir, "workspaceConfig.json")

    def base_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env["SLUICE_LOG_LEVEL"] = "info"
        if os.environ.get("SLUICE_KAFKA_DEBUG"):  # librdkafka's debug contexts, e.g. eos,msg
            env["SLUICE_KAFKA_DEBUG"] = os.environ["SLUICE_KAFKA_DEBUG"]
            env["SLUICE_LOG_LEVEL"] = "debug"
        return env

    def write_workspace(self, cfg):
        with open(self.ws_path + ".tmp", "w") as f:
            json.dump(cfg, f, indent=1)
        os.replace(self.ws_path + ".tmp", self.ws_path)

    def add_role(self, name, role, env, port_var):
        e = self.base_env()
        e.update(env)
        e[port_var] = str(h.free_port())
        self.role_env[name] = (role, e, int(e[port_var]))
        return self.start_role(name)

    def start_role(self, name):
        role, env, port = self.role_env[name]
        p = h.Proc(name, [h.SLUICE, role], env, self.workdir)
        p.url = f"http://127.0.0.1:{port}"
        p.env = env
        self.procs.append(p)
        self.roles[name] = p
        return p

    def healthy(self, name):
        p = self.roles[name]
        return p.alive() and h.http("GET", p.url + "/health", timeout=3)[0] == 200

    def wait_healthy(self, name, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            p = self.roles[name]
            if not p.alive():
                raise RuntimeError(f"{name} exited with {p.p.returncode}:\n{p.output()[-3000:]}")
            if self.healthy(name):
                return True
            time.sleep(0.2)
        return False

    def kill_role(self, name):
        p = self.roles[name]
        p.signal(signal.SIGKILL)
        p.p.wait()

    def close(self):
        for p in self.procs:
            p.kill()


def sink_file(sink):
    return os.path.join(os.path.dirname(sink.proc.log_path), f"sink-{sink.port}.jsonl")


def webhook_dest(dest_id, url):
    return {"id": dest_id, "name": dest_id, "enabled": True,
            "config": {"webhookUrl": url + "/" + dest_id, "webhookMethod": "POST"},
            "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook",
                                      "config": {"supportedMessageTypes": ["track"]}}}


def postgres_dest(dest_id, dsn, database, namespace):
    f = dsn_fields(dsn)
    return {"id": dest_id, "name": dest_id, "enabled": True,
            "config": {"host": f.get("host", "127.0.0.1"), "port": f.get("port", "5432"),
                       "database": database, "user": f.get("user", "postgres"),
                       "password": f.get("password", ""), "sslMode": "disable",
                       "namespace": namespace},
            "destinationDefinition": {"name": "POSTGRES", "displayName": "Postgres",
                                      "config": {"supportedMessageTypes": ["track"]}}}


def workspace(dests):
    cfg = h.workspace_config("http://127.0.0.1:9", write_key=WRITE_KEY)
    cfg["workspaceId"] = "chaos-workspace"
    cfg["sources"][0]["id"] = "src-chaos"
    cfg["sources"][0]["name"] = "chaos"
    cfg["sources"][0]["destinations"] = dests
    return cfg


class FaultLog:
    """Faults injected, with their times relative to the start of the load."""

    def __init__(self, t0):
        self.t0 = t0
        self.items = []
        self.lock = threading.Lock()

    def run(self, kind, target, fn, detail=""):
        start = time.time()
        h.log(f"fault +{start - self.t0:6.1f}s {kind} {target} {detail}")
        rec = {"kind": kind, "target": target, "detail": detail,
               "at_s": round(start - self.t0, 1), "at_epoch": round(start, 3)}
        try:
            extra = fn()
            if isinstance(extra, dict):
                rec.update(extra)
            rec["ok"] = True
        except Exception as e:  # noqa: BLE001 - a fault that could not be injected is reported
            rec["ok"] = False
            rec["error"] = str(e)[-600:]
            h.log(f"fault {kind} {target} failed: {rec['error']}")
        rec["took_s"] = round(time.time() - start, 1)
        with self.lock:
            self.items.append(rec)
        return rec
