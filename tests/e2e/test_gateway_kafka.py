"""The gateway when Kafka is taken away. Clients keep sending events (/v1/batch and /v1/track,
every event with its own messageId) while brokers go down and come back:

- devbroker: `sluice dev-kafka` with 3 brokers, all taken down through its control API;
- real-down: every node of the real 3-node Kafka fixture SIGKILLed, then restarted;
- real-one-down: one of the 3 real nodes SIGKILLed, then restarted.

The gateway must answer 200 only for events Kafka acknowledged: while no broker is up only
503s (with Retry-After, each within gateway.ack_timeout plus a little), /health keeps
answering quickly, the gateway recovers by itself once the brokers are back, and at the end
every event that got a 200 is in the events topic. With one broker of three down, ingest goes
on after at most a short blip while leaders move.

The real-* cases stop brokers of the Kafka fixture that other tests share: they run alone
(RUN_SERIAL), restart every broker they stopped in any case, and wait until the cluster is
healthy again before they exit.

Usage: test_gateway_kafka.py --case devbroker|real-down|real-one-down
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import harness as h

ACK_TIMEOUT = 2.0            # SLUICE_GATEWAY_ACK_TIMEOUT
SLACK = 1.5                  # a 503 arrives within ACK_TIMEOUT + SLACK
HTTP_TIMEOUT = ACK_TIMEOUT + 10  # a request that takes this long counts as a hang
HEALTH_LATENCY = 1.0         # /health answers within this, whatever Kafka does
WRITE_KEY = "e2e-write-key"
SKIP = 77                    # ctest SKIP_RETURN_CODE


class Load:
    """Client threads that send events continuously and record every answer."""

    def __init__(self, url, tag, threads=3, pause=0.05):
        self.url, self.tag, self.pause = url, tag, pause
        self.results = []  # dicts: t0, t1, status, retry_after, ids, path, body
        self.health = []   # dicts: t0, t1, status
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(threads)]
        self.threads.append(threading.Thread(target=self._prober, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(HTTP_TIMEOUT + 5)

    def _client(self, n):
        seq = 0
        while not self.stop_ev.is_set():
            seq += 1
            user = f"user-{n}-{seq % 5}"
            if seq % 2:
                ids = [f"{self.tag}-{n}-{seq}-{k}" for k in range(3)]
                path = "/v1/batch"
                body = {"batch": [
                    {"type": "track", "userId": user, "event": "Load", "messageId": ids[0],
                     "properties": {"seq": seq}},
                    {"type": "identify", "userId": user, "messageId": ids[1],
                     "traits": {"n": n}},
                    {"type": "page", "anonymousId": f"anon-{n}-{seq % 7}", "messageId": ids[2],
                     "name": "Load"}]}
            else:
                ids = [f"{self.tag}-{n}-{seq}-0"]
                path = "/v1/track"
                body = {"userId": user, "event": "Load", "messageId": ids[0],
                        "properties": {"seq": seq}}
            t0 = time.time()
            status, resp, headers = h.http("POST", self.url + path, body, write_key=WRITE_KEY,
                                           timeout=HTTP_TIMEOUT)
            t1 = time.time()
            with self.lock:
                self.results.append({"t0": t0, "t1": t1, "status": status, "path": path,
                                     "retry_after": headers.get("Retry-After"), "ids": ids,
                                     "body": resp[:200]})
            self.stop_ev.wait(self.pause)

    def _prober(self):
        while not self.stop_ev.is_set():
            t0 = time.time()
            status, _, _ = h.http("GET", self.url + "/health", timeout=HTTP_TIMEOUT)
            with self.lock:
                self.health.append({"t0": t0, "t1": time.time(), "status": status})
            self.stop_ev.wait(0.25)

    def between(self, start, end=None, what="results"):
        """Requests that started at or after `start` and (if end) ended before `end`."""
        with self.lock:
            rows = list(getattr(self, what))
        return [r for r in rows if r["t0"] >= start and (end is None or r["t1"] <= end)]

    def wait_status(self, status, since, timeout, what):
        """Waits for a request that started after `since` to be answered `status`; returns
        the time it was answered."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hits = [r for r in self.between(since) if r["status"] == status]
            if hits:
                return min(r["t1"] for r in hits)
            time.sleep(0.1)
        rows = self.between(since)
        h.fail(f"no {status} within {timeout}s {what}; answers meanwhile: "
               f"{summary(rows)}; last: {rows[-3:]}")


def summary(rows):
    out = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def check_no_hangs(load):
    hung = [r for r in load.between(0) if r["status"] == 0]
    assert not hung, f"requests without an answer within {HTTP_TIMEOUT}s: {hung[:5]}"
    hung = [r for r in load.between(0, what="health") if r["status"] == 0]
    assert not hung, f"/health without an answer within {HTTP_TIMEOUT}s: {hung[:5]}"


def check_down(load, down_at, up_at):
    """While no broker is up: only 503s, each with Retry-After and within the ack timeout;
    /health answers quickly."""
    rows = load.between(down_at, up_at)
    h.log(f"while Kafka was down ({up_at - down_at:.1f}s): {summary(rows)}")
    assert len(rows) >= 3, f"too few requests while Kafka was down: {rows}"
    ok = [r for r in rows if r["status"] == 200]
    assert not ok, f"200 while no Kafka broker was up (events that cannot be in Kafka): {ok[:5]}"
    other = [r for r in rows if r["status"] != 503]
    assert not other, f"answers other than 503 while Kafka was down: {other[:5]}"
    slow = [r for r in rows if r["t1"] - r["t0"] > ACK_TIMEOUT + SLACK]
    assert not slow, (f"503s later than ack_timeout {ACK_TIMEOUT}s + {SLACK}s: "
                      f"{[(round(r['t1'] - r['t0'], 2), r['path']) for r in slow[:5]]}")
    no_ra = [r for r in rows if not r["retry_after"]]
    assert not no_ra, f"503s without Retry-After: {no_ra[:5]}"
    took = sorted(r["t1"] - r["t0"] for r in rows)
    h.log(f"503 latency: min {took[0]:.2f}s, max {took[-1]:.2f}s; Retry-After "
          f"{sorted({r['retry_after'] for r in rows})}")
    probes = load.between(down_at, up_at, what="health")
    assert len(probes) >= 3, probes
    bad = [p for p in probes if p["status"] not in (200, 503)
           or p["t1"] - p["t0"] > HEALTH_LATENCY]
    assert not bad, f"/health did not answer quickly while Kafka was down: {bad[:5]}"
    h.log(f"/health while down: {summary(probes)}, slowest "
          f"{max(p['t1'] - p['t0'] for p in probes) * 1000:.0f} ms")


def check_flowing(load, since, until, what):
    """Every request in [since, until] got 200."""
    rows = load.between(since, until)
    assert len(rows) >= 3, f"too few requests {what}: {rows}"
    bad = [r for r in rows if r["status"] != 200]
    assert not bad, f"non-200 answers {what}: {summary(rows)}; e.g. {bad[:3]}"


def check_recovers(load, since, within, what, window=5):
    """The gateway recovers by itself: a 200 soon after `since`, and from `since + within`
    on (watched for `window` seconds) nothing but 200s."""
    first = load.wait_status(200, since, within, what)
    time.sleep(max(0, since + within + window - time.time()))
    rows = load.between(since, time.time())
    refused = [r for r in rows if r["status"] != 200]
    h.log(f"{what}: first 200 after {first - since:.1f}s, last other answer "
          f"{(max(r['t1'] for r in refused) - since) if refused else 0:.1f}s after; "
          f"{summary(rows)}")
    check_flowing(load, since + within, time.time(), f"from {within}s {what}")


def check_in_kafka(env, load, brokers):
    """Every event that got a 200 is in the events topic."""
    acked, refused = set(), set()
    for r in load.between(0):
        (acked if r["status"] == 200 else refused).update(r["ids"])
    topic = env.prefix + "events"
    seen = {}
    for attempt in range(3):
        try:
            events = h.kafka_events(brokers, topic, timeout=60)
        except AssertionError:
            if attempt == 2:
                raise
            time.sleep(2)
            continue
        seen = {}
        for ev in events:
            seen[ev.get("messageId")] = seen.get(ev.get("messageId"), 0) + 1
        if acked <= set(seen):
            break
        time.sleep(2)  # a consumer may have seen stale metadata right after a restart
    missing = sorted(acked - set(seen))
    dups = sum(1 for m in acked if seen.get(m, 0) > 1)
    h.log(f"{len(acked)} events got 200, {len(refused)} got another answer; in Kafka: "
          f"{len(seen)} distinct messageIds, {len(missing)} of the 200'd missing, "
          f"{len(refused & set(seen))} of the refused present anyway, {dups} 200'd duplicated")
    assert len(acked) >= 10, f"too few events acknowledged to judge: {len(acked)}"
    assert not missing, (f"{len(missing)} events were answered 200 but are not in Kafka, "
                         f"e.g. {missing[:10]}")


def start_gateway(env, brokers):
    env.write_workspace(h.workspace_config("http://127.0.0.1:9"))
    p = env.start("gateway", SLUICE_KAFKA_BROKERS=brokers,
                  SLUICE_GATEWAY_ACK_TIMEOUT=f"{int(ACK_TIMEOUT * 1000)}ms")
    env.wait_healthy(p)
    # The first event creates the topic on a real cluster; wait until Kafka takes events.
    h.wait_for("a first 200", lambda: h.http(
        "POST", p.url + "/v1/track", h.track("warmup", messageId=f"warmup-{time.time()}"),
        write_key=WRITE_KEY, timeout=HTTP_TIMEOUT)[0] == 200, timeout=60, interval=0.5)
    return p


def finish(env, p, load, brokers):
    load.stop()
    check_no_hangs(load)
    check_in_kafka(env, load, brokers)
    assert p.alive(), p.output()[-3000:]
    assert p.stop() == 0, p.output()[-3000:]


# ---- devbroker ----

def case_devbroker(env):
    dk = h.DevKafka(env, brokers=3)
    p = start_gateway(env, dk.bootstrap)
    load = Load(p.url, "dev").start()
    try:
        time.sleep(2)
        check_flowing(load, 0, time.time(), "before the brokers went down")
        dk.all_brokers("down")
        down_at = time.time()
        h.log("all dev brokers down")
        time.sleep(8)
        up_at = time.time()
        dk.all_brokers("up")
        h.log("all dev brokers up")
        check_down(load, down_at, up_at)
        # librdkafka's reconnect backoff (up to reconnect.backoff.max.ms) delays some brokers.
        check_recovers(load, up_at, 20, "after the brokers came back")
    finally:
        load.stop()
    finish(env, p, load, dk.bootstrap)


# ---- the real Kafka fixture ----

class Cluster:
    """The Kafka fixture's nodes (scripts/kafka-local, nodes numbered 1..N)."""

    def __init__(self):
        self.dir = os.environ.get("SLUICE_TEST_KAFKA_DIR")
        if os.environ.get("SLUICE_TEST_KAFKA_BROKERS") or not self.dir or \
                not os.path.exists(os.path.join(self.dir, "nodes")):
            h.log("SKIP: needs the kafka fixture started by scripts/kafka-local (ctest), not "
                  "an external Kafka (SLUICE_TEST_KAFKA_BROKERS) whose brokers it can't stop")
            sys.exit(SKIP)
        with open(os.path.join(self.dir, "nodes")) as f:
            self.n = int(f.read().strip())
        if self.n < 3:
            h.fail(f"the kafka fixture has {self.n} node(s); this test needs 3")
        self.brokers = h.kafka_brokers()
        self.stopped = set()

    def pid(self, node):
        with open(os.path.join(self.dir, f"node{node}", "pid")) as f:
            return int(f.read().strip())

    def kill(self, node):
        pid = self.pid(node)
        self.stopped.add(node)
        r = h.kafka_local("kill-broker", "--dir", self.dir, "--node", str(node))
        if r.returncode != 0:
            h.fail(f"kafka-local kill-broker {node}: {r.stderr}")
        h.wait_for(f"node {node} (pid {pid}) to exit",
                   lambda: not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z",
                   timeout=10, interval=0.05)

    def start(self, nodes):
        """Starts nodes in parallel (kafka-local start-broker waits until all N are up)."""
        procs = {i: subprocess.Popen(
            [os.path.join(h.SOURCE_DIR, "scripts", "kafka-local"), "start-broker", "--dir",
             self.dir, "--node", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for i in sorted(nodes)}
        errors = []
        for i, pr in procs.items():
            out, _ = pr.communicate(timeout=180)
            if pr.returncode == 0:
                self.stopped.discard(i)
            else:
                errors.append(f"node {i}: {out[-800:]}")
        if errors:
            h.fail("kafka-local start-broker failed: " + "; ".join(errors))

    def metadata(self):
        r = subprocess.run(["kcat", "-b", self.brokers, "-L", "-J", "-m", "5"],
                           capture_output=True, text=True, timeout=30)
        try:
            return json.loads(r.stdout) if r.returncode == 0 else None
        except ValueError:
            return None

    def wait_healthy(self, timeout=90):
        """Until every node is a broker again and every partition has a leader and all its
        replicas in sync (so tests after this one find the cluster as it was)."""
        last = ["no metadata"]

        def healthy():
            md = self.metadata()
            if not md:
                return False
            if len(md.get("brokers", [])) < self.n:
                last[0] = f"brokers {[b['id'] for b in md.get('brokers', [])]}"
                return False
            for t in md.get("topics", []):
                for part in t.get("partitions", []):
                    if part.get("leader", -1) < 0 or \
                            len(part.get("isrs", [])) < len(part.get("replicas", [])):
                        last[0] = f"{t['topic']}[{part['partition']}]: {part}"
                        return False
            return True
        deadline = time.time() + timeout
        while not healthy():
            if time.time() > deadline:
                h.fail(f"the kafka cluster is not healthy {timeout}s after the restart: {last[0]}")
            time.sleep(0.5)

    def leader_of(self, topic, partition=0):
        md = self.metadata() or {}
        for t in md.get("topics", []):
            if t["topic"] == topic:
                for part in t["partitions"]:
                    if part["partition"] == partition:
                        return part["leader"]
        return None

    def restore(self):
        """Restarts whatever this test stopped and waits until the cluster is healthy."""
        if self.stopped:
            h.log(f"restarting kafka nodes {sorted(self.stopped)}")
            self.start(set(self.stopped))
        self.wait_healthy()
        h.log("kafka cluster healthy again")


def real_case(fn):
    def run(env):
        cluster = Cluster()
        try:
            fn(env, cluster)
        finally:
            cluster.restore()
    return run


@real_case
def case_real_down(env, cluster):
    p = start_gateway(env, cluster.brokers)
    load = Load(p.url, "down").start()
    try:
        time.sleep(2)
        check_flowing(load, 0, time.time(), "before the brokers went down")
        for i in range(1, cluster.n + 1):
            cluster.kill(i)
        down_at = time.time()
        h.log("all kafka nodes killed")
        time.sleep(8)
        up_at = time.time()
        cluster.start(range(1, cluster.n + 1))
        restarted = time.time()
        h.log(f"all kafka nodes restarted ({restarted - up_at:.1f}s)")
        check_down(load, down_at, up_at)
        check_recovers(load, restarted, 20, "after the cluster was back")
        cluster.wait_healthy()
        check_flowing(load, time.time() - 3, time.time(), "once the cluster is healthy")
    finally:
        load.stop()
    finish(env, p, load, cluster.brokers)


@real_case
def case_real_one_down(env, cluster):
    p = start_gateway(env, cluster.brokers)
    load = Load(p.url, "one").start()
    try:
        time.sleep(2)
        check_flowing(load, 0, time.time(), "before a broker went down")
        # The node leading partition 0 of the events topic, so that some leaders must move.
        victim = cluster.leader_of(env.prefix + "events") or 2
        cluster.kill(victim)
        down_at = time.time()
        h.log(f"kafka node {victim} killed")
        resumed = load.wait_status(200, down_at, 20, f"after node {victim} went down")
        # Leaders move once the controller fences the node (broker.session.timeout.ms, 9 s):
        # from 20 s after the kill on, everything is acknowledged by the two remaining nodes.
        time.sleep(max(0, down_at + 27 - time.time()))
        after = load.between(down_at, time.time())
        refused = [r for r in after if r["status"] != 200]
        h.log(f"with node {victim} down: first 200 after {resumed - down_at:.1f}s; "
              f"{summary(after)}; last non-200 answered "
              f"{(max(r['t1'] for r in refused) - down_at) if refused else 0:.1f}s after the kill")
        check_flowing(load, down_at + 20, time.time(), f"from 20s after node {victim} went down")
        up_at = time.time()
        cluster.start({victim})
        h.log(f"kafka node {victim} restarted ({time.time() - up_at:.1f}s)")
        cluster.wait_healthy()
        time.sleep(3)
        check_flowing(load, time.time() - 2.5, time.time(), "after the node came back")
        h.log(f"during the restart: {summary(load.between(up_at))}")
    finally:
        load.stop()
    finish(env, p, load, cluster.brokers)


CASES = {"devbroker": case_devbroker, "real-down": case_real_down,
         "real-one-down": case_real_one_down}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=sorted(CASES), required=True)
    args = ap.parse_args()
    h.run(CASES[args.case], f"gateway-kafka-{args.case}",
          kafka="embedded" if args.case == "devbroker" else "real")


if __name__ == "__main__":
    main()
