#!/usr/bin/env python3
"""Consumer lag (issue 7): `sluice lag` and the roles' lag gauges on /metrics.

  --kafka real      gateway, processor and router as their own processes on the real Kafka.
                    The router is stopped and N events are sent: `sluice lag --watch --json`
                    shows the router group's lag rise to N and its status go from OK to WARN (a
                    sample of the window still has lag 0 and the lag has grown since) to ERR
                    (the partitions with lag are STOP: nobody in the group holds them). The figures agree with
                    Kafka's own kafka-consumer-groups --describe partition by partition. The
                    router is started again: lag 0, OK, on `sluice lag` and on its /metrics.
                    A slow consumer (kcat in a group of its own, 2 messages while 10 arrive)
                    shows WARN, then ERR (STOP) once it is gone.
  --kafka embedded  `sluice all` on the embedded dev broker: Sluice's own groups are shown
                    (membership unknown, said in a note) and on /metrics; --all-groups fails
                    with a message saying the dev broker has no ListGroups.
"""
import argparse
import json
import subprocess
import threading
import time

import harness as h

KEY = "e2e-write-key"
N = 40
FAST = {
    "SLUICE_KAFKA_LAG_INTERVAL": "500ms",
    "SLUICE_KAFKA_LAG_WINDOW": "3",
    "SLUICE_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": "1000",
    "SLUICE_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "SLUICE_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
}
GROUP_CMD = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
T0 = time.time()


def log(msg):
    h.log(f"{time.time() - T0:5.1f}s {msg}")


def send(p, n, tag):
    batch = [dict(h.track(f"{tag}-user-{i}"), type="track", messageId=f"{tag}-{i}")
             for i in range(n)]
    status, body, _ = h.http("POST", p.url + "/v1/batch", {"batch": batch}, write_key=KEY)
    if status != 200:
        h.fail(f"/v1/batch answered {status}: {body[:200]}")


def lag(env, *args, brokers=None, expect_rc=0):
    """Runs `sluice lag --json ARGS`; returns {group: group object}."""
    e = env.sluice_env(**({"SLUICE_KAFKA_BROKERS": brokers} if brokers else {}))
    r = subprocess.run([h.SLUICE, "lag", "--json", *args], env=e, capture_output=True,
                       text=True, timeout=120)
    if r.returncode != expect_rc:
        h.fail(f"sluice lag {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    if expect_rc:
        return r
    return {g["group"]: g for g in json.loads(r.stdout)["groups"]}


def metrics(p):
    status, body, _ = h.http("GET", p.url + "/metrics", timeout=10)
    if status != 200:
        h.fail(f"{p.name} /metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def gauge(m, name, **labels):
    key = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    return m.get(key)


def wait_group(env, group, what, pred, timeout=60, **kw):
    last = {}

    def check():
        last["g"] = lag(env, "--group", group, "--samples", "2", "--interval", "200ms", **kw)
        return pred(last["g"].get(group))
    try:
        h.wait_for(what, check, timeout=timeout, interval=0.5)
    except AssertionError:
        log(json.dumps(last.get("g"), indent=1))
        raise
    return last["g"][group]


def watch_samples(proc):
    out = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def kafka_describe(env, group):
    """kafka-consumer-groups --describe: {partition: (current, end, lag)} for numeric rows."""
    r = h.kafka_local("tool", GROUP_CMD, "--bootstrap-server", env.brokers, "--describe",
                      "--group", group)
    if r.returncode != 0:
        h.fail(f"kafka-consumer-groups failed ({r.returncode}): {r.stdout}\n{r.stderr[-2000:]}")
    rows = {}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] == group and f[2].isdigit():
            rows[int(f[2])] = tuple(None if x == "-" else int(x) for x in f[3:6])
    log(f"kafka-consumer-groups --describe --group {group}:\n{r.stdout.strip()}")
    return rows


def case_real(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url, write_key=KEY))
    h.create_topics(env)
    router_group, delivery = env.prefix + "router", env.prefix + "delivery"
    gw = env.start("gateway", **FAST)
    pr = env.start("processor", **FAST)
    rt = env.start("router", **FAST)
    for p in (gw, pr, rt):
        env.wait_healthy(p)

    # Warm up: the router commits (past the processor's transaction markers: lag 0, not 1).
    send(gw, 5, "warm")
    h.wait_for("the 5 warm-up events at the sink", lambda: len(sink.events()) >= 5, timeout=60)
    g = wait_group(env, router_group, "router group lag 0 and OK",
                   lambda g: g and g["total_lag"] == 0 and g["status"] == "OK"
                   and g["state"] == "Stable")
    log(f"warm: router group {g['state']} {g['status']} lag {g['total_lag']}")

    def router_gauges(p, want_lag):
        m = metrics(p)
        s = gauge(m, "kafka_consumergroup_group_sum_lag", group=router_group)
        st = gauge(m, "sluice_consumergroup_status", group=router_group)
        parts = [k for k in m if k.startswith("kafka_consumergroup_group_lag{")
                 and f'group="{router_group}"' in k]
        return s == want_lag and st == 1 and len(parts) >= 1 and \
            gauge(m, "kafka_partition_latest_offset", topic=delivery, partition=0) is not None
    log("warm: router group lag 0 and OK")
    h.wait_for("the router's /metrics lag gauges at 0 and OK", lambda: router_gauges(rt, 0),
               timeout=30, interval=0.3)
    log("router /metrics: lag 0, OK")
    # each role samples its group's lag on its own clock: the processor's first may come later
    h.wait_for("the processor's /metrics lag of its own group",
               lambda: gauge(metrics(pr), "kafka_consumergroup_group_sum_lag",
                             group=env.prefix + "processor") is not None, timeout=30, interval=0.3)

    # Router stopped; N events: the lag rises to N, status OK, WARN, then ERR (STOP).
    if rt.stop() != 0:
        h.fail(f"the router exited with {rt.p.returncode}")
    watch = h.Proc("lag-watch", [h.SLUICE, "lag", "--watch", "500ms", "--samples", "3",
                                 "--json", "--group", router_group],
                   env.sluice_env(), env.workdir)
    env.procs.append(watch)
    h.wait_for("a first sample of the watch", lambda: watch_samples(watch), timeout=30)
    log("router stopped, watch started")
    t_send = time.time()
    send(gw, N, "lag")

    def risen():
        s = [x["groups"][0] for x in watch_samples(watch)[-2:]]
        return len(s) == 2 and s[1]["total_lag"] >= N and s[1]["status"] == "ERR" and \
            s[0]["total_lag"] == s[1]["total_lag"] and \
            all(p["status"] == "STOP" for p in s[1]["partitions"] if p["lag"])
    h.wait_for(f"the watch to show a steady lag of at least {N}, every partition with lag STOP",
               risen, timeout=60, interval=0.3)
    watch.stop()
    samples = [s["groups"][0] for s in watch_samples(watch)]
    trail = [(g["total_lag"], g["status"]) for g in samples]
    log(f"watch (total lag, status) every 500 ms: {trail}")
    if trail[0] != (0, "OK"):
        h.fail(f"the first sample should be lag 0 and OK: {trail[0]}")
    if any(b[0] < a[0] for a, b in zip(trail, trail[1:])):
        h.fail(f"the lag went down while the router was stopped: {trail}")
    seq = [t[1] for i, t in enumerate(trail) if i == 0 or t[1] != trail[i - 1][1]]
    if seq != ["OK", "WARN", "ERR"]:
        h.fail(f"the status should go OK, WARN, then ERR: {trail}")
    last = samples[-1]
    # Offsets count the processor's transaction markers too (as Kafka's LAG does): the
    # messages between the committed offsets and the ends are exactly the N events.
    # Kafka's own tool, in the background meanwhile (a JVM takes seconds to start).
    theirs = {}
    jvm = threading.Thread(target=lambda: theirs.update(kafka_describe(env, router_group)))
    jvm.start()
    committed = {p["partition"]: p["committed"] or 0 for p in last["partitions"]}
    r = subprocess.run(["kcat", "-C", "-b", env.brokers, "-t", delivery, "-o", "beginning",
                        "-e", "-q", "-f", "%p %o\\n"], capture_output=True, text=True,
                       timeout=60)
    msgs = sum(1 for line in r.stdout.splitlines()
               if int(line.split()[1]) >= committed[int(line.split()[0])])
    log(f"router group lag {last['total_lag']} offsets = {msgs} messages + "
          f"{last['total_lag'] - msgs} transaction markers")
    if msgs != N:
        h.fail(f"{msgs} messages behind the router group's committed offsets, not {N}")
    if last["state"] != "Empty":
        h.fail(f"the router group should be Empty: {last['state']}")
    for p in last["partitions"]:
        want = "STOP" if p["lag"] else "OK"
        if p["status"] != want or p["consumer_id"] is not None:
            h.fail(f"partition {p['partition']}: lag {p['lag']} status {p['status']}, "
                   f"expected {want} and no consumer")
        if p["lag"] and not 0 < p["lag_seconds"] <= time.time() - t_send + 5:
            h.fail(f"partition {p['partition']}: lag_seconds {p['lag_seconds']}")

    # The same figures as Kafka's own tool, partition by partition.
    ours = {p["partition"]: (p["committed"], p["end"], p["lag"])
            for p in lag(env, "--group", router_group)[router_group]["partitions"]}
    slow_consumer(env)
    jvm.join()
    if not theirs:
        h.fail("kafka-consumer-groups showed no partition")
    for part, row in theirs.items():
        if row[0] is None:
            continue
        if ours.get(part) != row:
            h.fail(f"partition {part}: sluice lag (committed, end, lag) {ours.get(part)}, "
                   f"kafka-consumer-groups {row}")
    log(f"sluice lag agrees with kafka-consumer-groups on {len(theirs)} partitions: "
          f"{sorted(ours.items())}")

    # Router back: lag 0 and OK, on `sluice lag` and on its /metrics.
    rt2 = env.start("router", name="router-2", **FAST)
    env.wait_healthy(rt2)
    h.wait_for(f"the {N + 5} events at the sink", lambda: len(sink.events()) >= N + 5,
               timeout=60)
    g = wait_group(env, router_group, "router group lag 0 and OK again",
                   lambda g: g and g["total_lag"] == 0 and g["status"] == "OK")
    log(f"restarted: router group {g['state']} {g['status']} lag {g['total_lag']}")
    h.wait_for("the new router's /metrics at lag 0 and OK", lambda: router_gauges(rt2, 0),
               timeout=30, interval=0.3)
    log("router /metrics back at lag 0, OK")


def slow_consumer(env):
    """A slow consumer: 2 messages consumed while 10 arrive is WARN; gone, it is ERR (STOP)."""
    slow_topic, slow_group = env.prefix + "slow", env.prefix + "slow-consumer"

    def produce(n):
        subprocess.run(["kcat", "-P", "-b", env.brokers, "-t", slow_topic, "-p", "0",
                        "-X", "allow.auto.create.topics=true"],
                       input="".join(f"m{i}\n" for i in range(n)), text=True, check=True,
                       timeout=30)

    def consume(n):
        subprocess.run(["kcat", "-C", "-b", env.brokers, "-G", slow_group, slow_topic, "-c",
                        str(n), "-q", "-X", "auto.offset.reset=earliest"],
                       capture_output=True, check=True, timeout=60)
    produce(10)
    consume(2)
    log("slow consumer at 2 of 10")
    watch = h.Proc("slow-watch", [h.SLUICE, "lag", "--watch", "1500ms", "--samples", "2", "--json",
                                  "--group", slow_group], env.sluice_env(), env.workdir)
    env.procs.append(watch)
    statuses = []
    for attempt in range(5):
        n = len(h.wait_for("a sample of the slow group", lambda: watch_samples(watch),
                           timeout=30))
        produce(10)  # between two samples: the offset moves, the lag grows
        consume(2)
        s = h.wait_for("the next sample", lambda: watch_samples(watch)[n:], timeout=30)
        statuses.append(s[0]["groups"][0]["status"])
        if statuses[-1] == "WARN":
            break
    log(f"slow consumer status after each step: {statuses}")
    if statuses[-1] != "WARN":
        h.fail(f"a consumer that moves but falls behind should be WARN: {statuses}")
    # ERR may come first as STALL, while the broker still lists kcat's member (it leaves the
    # group as it exits, which a busy broker shows a moment later); once gone, STOP.
    h.wait_for("the gone slow consumer's partition to be STOP", lambda: watch_samples(watch)[-1]
               ["groups"][0]["partitions"][0]["status"] == "STOP", timeout=30, interval=0.3)
    g = watch_samples(watch)[-1]["groups"][0]
    if g["status"] != "ERR":
        h.fail(f"a group with a STOP partition should be ERR: {g}")
    watch.stop()
    log("slow consumer: ERR (STOP) once gone")


def case_embedded(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url, write_key=KEY))
    p = env.start("all", SLUICE_KAFKA_BROKERS="", **FAST)
    env.wait_healthy(p)
    send(p, 5, "dev")
    h.wait_for("the 5 events at the sink", lambda: len(sink.events()) >= 5, timeout=60)
    marker = "using the embedded dev broker at "
    line = next(l for l in p.output().splitlines() if marker in l)
    brokers = line.split(marker, 1)[1].split(",")[0].split()[0]
    router_group = env.prefix + "router"
    g = wait_group(env, router_group, "the router group at lag 0 on the dev broker",
                   lambda g: g and g["total_lag"] == 0 and g["status"] == "OK"
                   and any(x["committed"] is not None for x in g["partitions"]), brokers=brokers)
    if g["state"] is not None:
        h.fail(f"membership can't be known on the dev broker: state {g['state']}")
    e = env.sluice_env(SLUICE_KAFKA_BROKERS=brokers)
    out = json.loads(subprocess.run([h.SLUICE, "lag", "--json", "--samples", "2", "--interval",
                                     "100ms"], env=e, capture_output=True, text=True,
                                    timeout=60).stdout)
    if "DescribeGroups" not in (out["note"] or ""):
        h.fail(f"no note on the unknown membership: {out['note']}")
    groups = [x["group"] for x in out["groups"]]
    log(f"dev broker: groups {groups}; note: {out['note']}")
    r = lag(env, "--all-groups", brokers=brokers, expect_rc=1)
    if "no ListGroups" not in r.stderr:
        h.fail(f"--all-groups on the dev broker: {r.stderr}")
    log(f"--all-groups on the dev broker: {r.stderr.strip()}")

    def gauges():
        m = metrics(p)
        return gauge(m, "kafka_consumergroup_group_sum_lag", group=router_group) == 0
    h.wait_for("sluice all's /metrics lag gauges", gauges, timeout=30, interval=0.3)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--kafka", choices=("real", "embedded"), required=True)
    a = ap.parse_args()

    def run(env):
        t0 = time.time()
        (case_real if a.kafka == "real" else case_embedded)(env)
        log(f"lag {a.kafka}: {time.time() - t0:.1f} s")
    h.run(run, "lag-" + a.kafka, kafka=a.kafka)
