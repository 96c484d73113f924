#!/usr/bin/env python3
"""The router (issue 5) end to end on the real Kafka: `sluice router` runs as its own process;
delivery jobs are produced to <prefix>delivery in the processor's job format (with kcat, keyed
by the user), or events go through gateway -> processor -> router; `sluice dev-sink`
instances are the destinations.

  --case retry      503s and timeouts are retried with a growing backoff; a 400 aborts at
                    once (aborted row, dead letter with stage "router" and the response); the
                    give-up rule (give_up_after 1 s, min_attempts 3)
  --case order      the sink fails one user's events for a while: that user's events arrive
                    later in their order, other users' events arrive meanwhile
  --case isolation  destination B down (503) and C stalled: A's events all arrive; B's and C's
                    are parked in sluice_parked and delivered in order once they recover
  --case restart    SIGKILL the router while it delivers thousands of jobs: nothing lost,
                    duplicates counted (only the unrecorded last moment may repeat); SIGKILL while jobs are parked: all delivered
  --case throttle   destination_settings throttle=20/1s: never more than 20 (+1) requests in
                    any 1 s, nothing lost
  --case status     gateway -> processor -> router, then `sluice status <messageId>` (and
                    --json) shows the destination and `succeeded` (skipped, exit 77, while
                    the command does not exist)
  --case workers    router.workers=2: both loops own delivery partitions (their
                    sluice_router_partitions gauges), every event arrives once and in its
                    user's order across a retry, and a throttle of 20/1s is shared out
                    between them (not 20 for each)
  --case rebalance  a second router joins the group while the first has requests in flight
                    to a stalled destination (router.timeout 20 s): the rebalance waits at
                    most 2 s for them, so another destination's new events arrive within
                    seconds, not after the timeout; the stalled jobs reach their destination
                    later, in order
  --case batch      jobs with a "batch" block (Amplitude-like) and a WEBHOOK with batch=N are
                    merged: fewer requests than events, valid bodies, all events, user order
"""
import argparse
import collections
import json
import signal
import subprocess
import threading
import time
import uuid

import harness as h

KEY = "e2e-write-key"
SKIP = 77  # SKIP_RETURN_CODE in tests/suites/router_e2e.cmake

# Short timings so that every case takes seconds (CI runs the suite twice on 2 cores).
FAST = {
    "SLUICE_ROUTER_RETRY_BASE": "200ms",
    "SLUICE_ROUTER_RETRY_MAX": "2s",
    "SLUICE_ROUTER_TIMEOUT": "1s",
    "SLUICE_ROUTER_PARK_POLL": "100ms",
    "SLUICE_ROUTER_BATCH_TIMEOUT": "200ms",
    # A SIGKILLed member leaves no LeaveGroup: a short session lets its successor in sooner.
    "SLUICE_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "SLUICE_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
}
# Consumers see a new topic at their next metadata refresh (10 s by default). The cases
# create the topics before any role starts (create_topics); 1 s is the backstop.
KAFKA_FAST = {"SLUICE_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": "1000"}
FAST.update(KAFKA_FAST)


# ---- workspace config ----

def webhook(dest_id, url):
    return {"id": dest_id, "name": dest_id, "enabled": True,
            "config": {"webhookUrl": url, "webhookMethod": "POST"},
            "destinationDefinition": {
                "name": "WEBHOOK", "displayName": "Webhook",
                "config": {"supportedMessageTypes":
                           ["track", "identify", "page", "screen", "group", "alias"]}}}


def amplitude(dest_id):
    return {"id": dest_id, "name": dest_id, "enabled": True, "config": {"apiKey": "am-key"},
            "destinationDefinition": {"name": "AM", "displayName": "Amplitude", "config": {}}}


def workspace(env, dests):
    cfg = h.workspace_config("http://127.0.0.1:9", write_key=KEY)
    cfg["sources"][0]["destinations"] = dests
    env.write_workspace(cfg)


# ---- delivery jobs, as the processor writes them (notes/router-design.md) ----

def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def job(dest, user, mid, url, body, dtype="WEBHOOK", batch=None):
    req = {"method": "POST", "url": url, "headers": {"Content-Type": "application/json"},
           "body": body}
    if batch:
        req["batch"] = batch
    return {"jobId": f"{mid}:{dest}", "messageId": mid, "sourceId": "src-e2e",
            "destinationId": dest, "destinationType": dtype, "userKey": user,
            "receivedAt": now_iso(), "request": req}


def webhook_job(dest, url, user, mid, seq):
    ev = {"type": "track", "event": "Seq", "userId": user, "rudderId": user, "messageId": mid,
          "properties": {"seq": seq}}
    return job(dest, user, mid, url, json.dumps(ev))


def interleaved(dest, url, users, per_user, tag):
    """per_user jobs for each user, interleaved; returns (jobs, {user: [messageIds in order]})."""
    jobs, sent = [], {u: [] for u in users}
    for i in range(per_user):
        for u in users:
            mid = f"{tag}-{u}-{i}"
            jobs.append(webhook_job(dest, url, u, mid, i))
            sent[u].append(mid)
    return jobs, sent


def kcat_producer(env):
    return ["kcat", "-P", "-b", env.brokers, "-t", env.prefix + "delivery", "-K", "\t",
            "-X", "topic.partitioner=murmur2_random", "-X", "enable.idempotence=true"]


def produce(env, jobs):
    """Produces jobs (keyed by userKey) to the delivery topic and waits for the acks."""
    lines = "".join(f"{j['userKey']}\t{json.dumps(j)}\n" for j in jobs)
    r = subprocess.run(kcat_producer(env), input=lines, capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        h.fail(f"kcat could not produce {len(jobs)} jobs: {r.stderr[-800:]}")


def start_router(env, name="router", **over):
    o = dict(FAST)
    o.update(over)
    t0 = time.time()
    p = env.start("router", name=name, **o)
    env.wait_healthy(p)
    h.log(f"{name} healthy after {time.time() - t0:.1f} s")
    return p


def restart_router(env, old, name, **over):
    return start_router(env, name=name, SLUICE_ROUTER_PORT=old.env["SLUICE_ROUTER_PORT"],
                        **over)


def produce_until_delivered(env, sink, jobs, sent, what, timeout):
    """Produces jobs and waits until each messageId of sent ({user: [mids]}) reached sink;
    returns the set of those messageIds."""
    produce(env, jobs)
    want = {m for ms in sent.values() for m in ms}
    wait(env, what, lambda: want <= set(mids(arrivals(sink))), timeout=timeout, interval=0.5)
    return want


def sigkill(p):
    p.killed = True
    p.signal(signal.SIGKILL)
    p.p.wait(10)


def wait(env, what, fn, timeout=30, interval=0.1):
    """h.wait_for, but failing at once, with its output, if a role or sink has died."""
    def check():
        for p in env.procs:
            if not p.alive() and not getattr(p, "killed", False):
                h.fail(f"{p.name} exited with {p.p.returncode} while waiting for {what}:\n"
                       f"{p.output()[-4000:]}")
        return fn()
    return h.wait_for(what, check, timeout, interval)


# ---- what the sinks got ----

def arrivals(sink, path=None):
    """Recorded requests in arrival order: dicts t (ms), path, body (parsed or None), raw."""
    out = []
    for r in sink.requests():
        if path and r["path"] != path:
            continue
        try:
            body = json.loads(r["body"])
        except ValueError:
            body = None
        out.append({"t": h.iso_ms(r["ts"]), "path": r["path"], "body": body, "raw": r["body"]})
    return out


def mids(recs):
    return [r["body"].get("messageId") for r in recs if isinstance(r["body"], dict)]


def check_user_order(what, delivered, sent):
    """delivered: messageIds in arrival order (successes only); sent: {user: [mids]}.
    Each user's messageIds must arrive in the order sent; duplicates are left out first."""
    for u, want in sent.items():
        ws = set(want)
        seen, got = set(), []
        for m in delivered:
            if m in ws and m not in seen:
                seen.add(m)
                got.append(m)
        if got != want:
            bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(got))
            h.fail(f"{what}: user {u}'s events arrived out of order or missing: first "
                   f"difference at #{bad}: got {got[bad:bad + 5]}, want {want[bad:bad + 5]} "
                   f"({len(got)} of {len(want)} arrived)")


def last_arrival_order(recs):
    """messageIds ordered by their last arrival (a retried job's last attempt is the one that
    succeeded, once its destination answers 2xx again)."""
    last = {}
    for i, m in enumerate(mids(recs)):
        last[m] = i
    return [m for m, _ in sorted(last.items(), key=lambda kv: kv[1])]


# ---- Postgres ----

def q(s):
    return "'" + s.replace("'", "''") + "'"


def sql(env, text):
    try:
        return h.psql(env.dsn, text)
    except subprocess.CalledProcessError as e:
        h.fail(f"psql: {e.stderr.strip()} (in: {text})")


def job_rows(env, dest):
    """sluice_jobs rows of a destination: (message_id, state, attempts, last_status,
    last_response) ordered by attempts."""
    rows = sql(env, "SELECT message_id, state, attempts, coalesce(last_status, 0), "
                    "translate(coalesce(last_response, ''), E'\\n\\t', '  ') "
                    f"FROM sluice_jobs WHERE destination_id = {q(dest)} "
                    "ORDER BY attempts, last_attempt_at")
    return [(r[0], r[1], int(r[2]), int(r[3]), r[4] if len(r) > 4 else "") for r in rows]


def parked(env, dest):
    """(rows in sluice_parked, distinct users) of a destination."""
    r = sql(env, "SELECT count(*), count(DISTINCT user_key) FROM sluice_parked "
                 f"WHERE destination_id = {q(dest)}")
    return int(r[0][0]), int(r[0][1])


def metric(p, name, dest):
    _, body, _ = h.http("GET", p.url + "/metrics")
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name + "{") and f'destination="{dest}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


# ---- cases ----

def case_retry(env):
    s503, sto, s400, sgu = (h.Sink(env) for _ in range(4))
    workspace(env, [webhook("d503", s503.url + "/x"), webhook("dto", sto.url + "/x"),
                    webhook("d400", s400.url + "/x"), webhook("dgu", sgu.url + "/x")])
    s503.set_mode(status=503, count=3)            # 3 failures, then 200
    sto.set_mode(status=200, delay_ms=2500, count=2)  # 2 timeouts (router.timeout 1s), then 200
    s400.set_mode(status=400)                     # a client error: abort at once
    sgu.set_mode(status=503)                      # never recovers: the give-up rule
    # give_up_after 1s and min_attempts 3 for every destination. dgu retries after 1.2 s,
    # 2.4 s: its second attempt is past 1 s already, its third is the last. d503 must not give
    # up on a slow machine (its third failure is near 0.6 s).
    # The processor's failed-events recorder copies dead letters into Postgres.
    pr = env.start("processor", **KAFKA_FAST)
    rt = start_router(env, SLUICE_ROUTER_GIVE_UP_AFTER="1s", SLUICE_ROUTER_MIN_ATTEMPTS="3",
                      SLUICE_ROUTER_DESTINATION_SETTINGS="d503.give_up_after=60s,"
                                                         "dgu.retry_base=1200ms")
    env.wait_healthy(pr)
    jobs = {d: webhook_job(d, s.url + "/x", f"user-{d}", f"m-{d}", 0)
            for d, s in [("d503", s503), ("dto", sto), ("d400", s400), ("dgu", sgu)]}
    t0 = time.time()
    produce(env, list(jobs.values()))

    def final(dest, state):
        rows = [r for r in job_rows(env, dest) if r[1] == state]
        return rows[-1] if rows else None
    ok503 = wait(env, "d503 succeeded", lambda: final("d503", "succeeded"), timeout=30)
    oktos = wait(env, "dto succeeded", lambda: final("dto", "succeeded"), timeout=30)
    ab400 = wait(env, "d400 aborted", lambda: final("d400", "aborted"), timeout=30)
    abgu = wait(env, "dgu aborted", lambda: final("dgu", "aborted"), timeout=30)
    h.log(f"all four outcomes recorded {time.time() - t0:.1f} s after the jobs were produced")
    time.sleep(1.5)  # a wrong extra attempt has time to show up

    def gaps(sink):
        t = [r["t"] for r in arrivals(sink)]
        return t, [b - a for a, b in zip(t, t[1:])]

    # 503 x3, then 200: four attempts, the waits between them growing (200, 400, 800 ms).
    t, g = gaps(s503)
    h.log(f"d503: {len(t)} attempts, gaps {g} ms; rows {job_rows(env, 'd503')}")
    if len(t) != 4:
        h.fail(f"d503: {len(t)} requests at the sink, want 4 (3 x 503, then 200)")
    # Nominally 200, 400, 800 ms; each may be late by a park poll and a store round trip.
    if g[0] < 150 or g[1] < g[0] - 100 or g[2] < g[1] + 100 or g[2] < g[0] + 400:
        h.fail(f"d503: the backoff does not grow from router.retry_base 200ms: gaps {g} ms")
    if ok503[2] != 4:
        h.fail(f"d503: succeeded row says {ok503[2]} attempts, want 4: {ok503}")
    failed = [r for r in job_rows(env, "d503") if r[1] == "failed"]
    if len(failed) != 3 or any(r[3] != 503 for r in failed):
        h.fail(f"d503: want one `failed` row (last_status 503) per retried attempt: "
               f"{job_rows(env, 'd503')}")

    # Two timeouts (the sink answers after 2.5 s, router.timeout is 1 s), then 200. The
    # second attempt fails past give_up_after (1 s) but with only 2 attempts: no abort.
    t, g = gaps(sto)
    h.log(f"dto: {len(t)} attempts, gaps {g} ms; rows {job_rows(env, 'dto')}")
    if len(t) != 3:
        h.fail(f"dto: {len(t)} requests at the sink, want 3 (2 timeouts, then 200)")
    if g[0] < 1000 or g[1] <= g[0]:
        h.fail(f"dto: gaps {g} ms: want >= the 1 s timeout plus a growing backoff")
    if oktos[2] != 3:
        h.fail(f"dto: succeeded row says {oktos[2]} attempts, want 3: {oktos}")

    # 400: aborted after one attempt, with the response kept.
    t, _ = gaps(s400)
    h.log(f"d400: {len(t)} attempts; row {ab400}")
    if len(t) != 1:
        h.fail(f"d400: {len(t)} requests at the sink, want exactly 1 (a 400 is not retried)")
    if ab400[2] != 1 or ab400[3] != 400 or '"ok":false' not in ab400[4]:
        h.fail(f"d400: aborted row {ab400}: want attempts 1, last_status 400 and the "
               "response body")

    # Always 503, retry_base 1.2 s: attempts at about 0, 1.2 and 3.6 s. After the second
    # (past 1 s, 2 attempts) it goes on; after the third it gives up.
    t, g = gaps(sgu)
    h.log(f"dgu: {len(t)} attempts, gaps {g} ms; row {abgu}")
    if len(t) != 3:
        h.fail(f"dgu: {len(t)} requests at the sink, want exactly 3 (give_up_after 1s, "
               f"min_attempts 3, dgu.retry_base 1200ms); gaps {g}")
    if g[0] < 1000:
        h.fail(f"dgu: second attempt {g[0]} ms after the first: dgu.retry_base=1200ms "
               "was not applied, so this does not show the min_attempts rule")
    if abgu[2] != 3 or abgu[3] != 503:
        h.fail(f"dgu: aborted row {abgu}: want attempts 3, last_status 503")

    # Dead letters: stage "router", the last response, the job unchanged; in Postgres too.
    def letters():
        r = sql(env, "SELECT destination_id, message_id, reason, event "
                     "FROM sluice_failed_events WHERE stage = 'router'")
        return r if {x[0] for x in r} >= {"d400", "dgu"} else None
    rows = wait(env, "router dead letters in sluice_failed_events", letters, timeout=20)
    h.log("dead letters: " + "; ".join(f"{r[0]}: {r[2][:80]}" for r in rows))
    if sorted(r[0] for r in rows) != ["d400", "dgu"]:
        h.fail(f"router dead letters for {sorted(r[0] for r in rows)}, want d400 and dgu")
    by = {r[0]: r for r in rows}
    if not by["d400"][2].startswith("HTTP 400") or '"ok":false' not in by["d400"][2]:
        h.fail(f"d400 dead letter reason: {by['d400'][2]!r}")
    if not by["dgu"][2].startswith("HTTP 503"):
        h.fail(f"dgu dead letter reason: {by['dgu'][2]!r}")
    if by["d400"][1] != "m-d400" or json.loads(by["d400"][3]) != jobs["d400"]:
        h.fail(f"d400 dead letter: messageId {by['d400'][1]}, event {by['d400'][3][:300]}")
    dl = [m for m in h.kafka_messages(env.brokers, env.prefix + "failed")
          if m["headers"].get("sluice-failed-stage") == "router"]
    d = next((m for m in dl if m["headers"].get("sluice-destination-id") == "d400"), None)
    if not d:
        h.fail(f"no router dead letter for d400 in the failed topic: {dl}")
    v = json.loads(d["value"])
    if d["key"] != "user-d400" or d["headers"].get("sluice-message-id") != "m-d400" or \
            v.get("stage") != "router" or v.get("destinationType") != "WEBHOOK" or \
            v.get("event") != jobs["d400"] or "eventOffset" not in v or \
            "eventPartition" not in v:
        h.fail(f"d400 dead letter in Kafka: key {d['key']}, headers {d['headers']}, {v}")
    retried = metric(rt, "sluice_router_retried_total", "d503")
    aborted = metric(rt, "sluice_router_aborted_total", "d400")
    h.log(f"metrics: retried d503 {retried}, aborted d400 {aborted}")


def case_order(env):
    sink = h.Sink(env)
    workspace(env, [webhook("dord", sink.url + "/o")])
    start_router(env)
    users = ["user-U", "user-V0", "user-V1", "user-V2", "user-V3"]
    jobs, sent = interleaved("dord", sink.url + "/o", users, 12, "ord")
    n_fail = 4
    sink.set_mode(status=503, match='"user-U"', count=n_fail)  # U's next 4 requests fail
    t0 = time.time()
    produce(env, jobs)
    want = {m for ms in sent.values() for m in ms}
    wait(env, "every event at the sink", lambda: want <= set(mids(arrivals(sink))),
               timeout=40)
    h.log(f"all {len(want)} events delivered {time.time() - t0:.1f} s after producing")
    time.sleep(0.5)
    recs = arrivals(sink)
    u_recs = [r for r in recs if r["body"]["userId"] == "user-U"]
    if len(u_recs) < n_fail or any(r["body"]["messageId"] != sent["user-U"][0]
                                   for r in u_recs[:n_fail]):
        h.fail(f"the first {n_fail} requests of user-U should be its first event, failed and "
               f"retried: {mids(u_recs)[:n_fail + 2]}")
    u_ok = mids(u_recs[n_fail:])
    if u_ok != sent["user-U"]:
        h.fail(f"user-U's events after the failures: {u_ok}, want {sent['user-U']} "
               "(in order, each once)")
    first_u_ok = u_recs[n_fail]["t"]
    others = [r for r in recs if r["body"]["userId"] != "user-U"]
    late = [r["body"]["messageId"] for r in others if r["t"] > first_u_ok]
    if late:
        h.fail(f"{len(late)} events of other users arrived only after user-U's backlog "
               f"started to drain (they were held up): {late[:10]}")
    check_user_order("other users", mids(others), {u: sent[u] for u in users[1:]})
    dups = len(mids(others)) - len(set(mids(others)))
    if dups:
        h.fail(f"{dups} events of other users were delivered twice")
    h.log(f"user-U's backlog drained {(u_recs[-1]['t'] - u_recs[0]['t']) / 1000:.1f} s "
          f"after its first attempt; the other users' {len(others)} events arrived "
          f"{(first_u_ok - max(r['t'] for r in others)) / 1000:.1f} s before it started")


def case_isolation(env):
    a, b, c = h.Sink(env), h.Sink(env), h.Sink(env)
    workspace(env, [webhook("dA", a.url + "/a"), webhook("dB", b.url + "/b"),
                    webhook("dC", c.url + "/c")])
    rt = start_router(env)
    b.set_mode(status=503)                  # B is down
    c.set_mode(status=200, delay_ms=5000)   # C stalls (router.timeout 1s)
    users = [f"user-{i}" for i in range(4)]
    ja, sa = interleaved("dA", a.url + "/a", users, 15, "a")
    jb, sb = interleaved("dB", b.url + "/b", users, 15, "b")
    jc, sc = interleaved("dC", c.url + "/c", users, 15, "c")
    jobs = [x for trio in zip(ja, jb, jc) for x in trio]
    t0 = time.time()
    produce(env, jobs)
    want_a = {m for ms in sa.values() for m in ms}
    wait(env, "all of A's events while B is down and C stalls",
               lambda: want_a <= set(mids(arrivals(a))), timeout=20)
    h.log(f"A: all {len(want_a)} events delivered {time.time() - t0:.1f} s after producing")
    check_user_order("A", mids(arrivals(a)), sa)
    if len(mids(arrivals(a))) != len(want_a):
        h.fail(f"A got {len(mids(arrivals(a)))} requests for {len(want_a)} events")

    for dest in ("dB", "dC"):
        n = wait(env, f"{dest}'s jobs parked for each user",
                       lambda: (lambda r: r if r[1] == len(users) else None)(parked(env, dest)),
                       timeout=20)
        keys = sql(env, "SELECT count(*) FROM sluice_parked_keys "
                        f"WHERE destination_id = {q(dest)}")[0][0]
        h.log(f"{dest}: {n[0]} jobs parked for {n[1]} users, {keys} parked keys")
    time.sleep(0.5)
    h.log("gauges sluice_router_parked (refreshed every few seconds): "
          f"dB {metric(rt, 'sluice_router_parked', 'dB')}, "
          f"dC {metric(rt, 'sluice_router_parked', 'dC')}")
    h.log(f"parked before recovery: dB {parked(env, 'dB')}, dC {parked(env, 'dC')}")

    b.set_mode(status=200)
    c.set_mode(status=200)
    t1 = time.time()
    for sink, sent, dest in ((b, sb, "dB"), (c, sc, "dC")):
        want = {m for ms in sent.values() for m in ms}

        def done():
            return want <= set(mids(arrivals(sink))) and parked(env, dest)[0] == 0
        wait(env, f"{dest}'s events delivered and unparked after recovery", done, timeout=30)
        check_user_order(dest, last_arrival_order(arrivals(sink)), sent)
        rows = sql(env, "SELECT count(DISTINCT job_id) FROM sluice_jobs WHERE "
                        f"destination_id = {q(dest)} AND state = 'succeeded'")
        if int(rows[0][0]) != len(want):
            h.fail(f"{dest}: {rows[0][0]} jobs with a succeeded row, want {len(want)}")
    h.log(f"B and C drained {time.time() - t1:.1f} s after they recovered")


def case_restart(env):
    s, pk = h.Sink(env), h.Sink(env)
    workspace(env, [webhook("dR", s.url + "/r"), webhook("dP", pk.url + "/p")])
    rt = start_router(env)

    # Part 1: a SIGKILL while a few thousand jobs are being delivered.
    users = [f"user-{i}" for i in range(60)]
    jobs, sent = interleaved("dR", s.url + "/r", users, 50, "r")
    want = {m for ms in sent.values() for m in ms}
    kc = subprocess.Popen(kcat_producer(env), stdin=subprocess.PIPE, text=True,
                          stderr=subprocess.PIPE)

    fed = [0]

    def feed():  # about 500 jobs/s, so the router is mid-stream when it is killed
        for i in range(0, len(jobs), 25):
            kc.stdin.write("".join(f"{j['userKey']}\t{json.dumps(j)}\n"
                                   for j in jobs[i:i + 25]))
            kc.stdin.flush()
            fed[0] = i + 25
            time.sleep(0.05)
        kc.stdin.close()
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        # Killed in the steady state (the router keeping up with the feed), not while it
        # catches up with what was produced before its consumer got its partitions.
        wait(env, "1000 deliveries, keeping up with the producer",
             lambda: (lambda n: n >= 1000 and n >= fed[0] - 250)(len(arrivals(s))),
             timeout=30, interval=0.05)
        sigkill(rt)
        before = arrivals(s)
        h.log(f"SIGKILL the router after {len(before)} deliveries of {len(jobs)}, "
              f"{fed[0]} produced")
        if len(before) >= len(jobs) - 100:
            h.fail("the router was not killed mid-stream")
    finally:
        feeder.join(60)
    if kc.wait(60) != 0:
        h.fail(f"kcat: {kc.stderr.read()[-500:]}")
    t0 = time.time()
    rt = restart_router(env, rt, "router-2")
    wait(env, "every job delivered after the restart", lambda: want <= set(mids(arrivals(s))),
               timeout=60, interval=0.5)
    time.sleep(1.0)
    got = mids(arrivals(s))
    dups = len(got) - len(set(got))
    # A job delivered again although the first router had recorded it succeeded: the restart
    # did not skip what was done (two succeeded rows). The others were delivered, or in
    # flight, in the moment before the SIGKILL and not yet recorded.
    twice = int(sql(env, "SELECT count(*) - count(DISTINCT job_id) FROM sluice_jobs "
                         "WHERE destination_id = 'dR' AND state = 'succeeded'")[0][0])
    killed_at = before[-1]["t"]
    first = {}
    for r in before:
        first.setdefault(r["body"]["messageId"], r["t"])
    again = {m for m in got if got.count(m) > 1} if dups else set()
    ages = sorted(killed_at - first[m] for m in again if m in first)
    h.log(f"restart: {len(want)} jobs, all delivered {time.time() - t0:.1f} s after the "
          f"restart; {dups} duplicates ({100.0 * dups / len(want):.2f}%); {twice} of them "
          f"recorded succeeded twice; first delivered {ages[:1] + ages[-1:]} ms before the "
          f"router's last delivery; {sum(1 for r in before if r['t'] > killed_at - 100)} "
          f"deliveries in its last 100 ms")
    check_user_order("after the SIGKILL", got, sent)
    if twice:
        h.fail(f"{twice} jobs recorded succeeded before the SIGKILL were delivered again")
    # The rest can only be the tail the killed router had delivered but not yet recorded
    # (its record follows each delivery by a few ms): nothing older may come again.
    late = [m for m in again if m not in first]
    if late:
        h.fail(f"{len(late)} jobs delivered twice after the restart, e.g. {late[:3]}")
    if ages and ages[-1] > 1000:
        h.fail(f"a job first delivered {ages[-1]} ms before the SIGKILL was delivered again: "
               f"it should have been recorded by then")

    # Part 2: a SIGKILL while the jobs of a broken destination are parked.
    pk.set_mode(status=503)
    pusers = [f"puser-{i}" for i in range(4)]
    pjobs, psent = interleaved("dP", pk.url + "/p", pusers, 10, "p")
    produce(env, pjobs)
    wait(env, "all 40 of dP's jobs parked",
               lambda: parked(env, "dP")[0] >= len(pjobs), timeout=30)
    time.sleep(1.0)  # offsets of parked jobs committed; a few more retries
    h.log(f"SIGKILL the router with {parked(env, 'dP')[0]} jobs parked")
    sigkill(rt)
    pk.set_mode(status=200)
    recovered = time.time() * 1000
    rt = restart_router(env, rt, "router-3")
    pwant = {m for ms in psent.values() for m in ms}

    def drained():
        return pwant <= set(mids(arrivals(pk))) and parked(env, "dP")[0] == 0
    wait(env, "the parked jobs delivered after the restart", drained, timeout=40)
    time.sleep(1.0)
    ok = [r for r in arrivals(pk) if r["t"] >= recovered]
    check_user_order("parked jobs after the restart", mids(ok), psent)
    pd = len(mids(ok)) - len(set(mids(ok)))
    h.log(f"parked jobs: all {len(pwant)} delivered after the restart, {pd} twice")
    if pd:
        h.fail(f"{pd} parked jobs were delivered twice after the restart")


def case_throttle(env):
    sink = h.Sink(env)
    workspace(env, [webhook("dT", sink.url + "/t")])
    rt = start_router(env, SLUICE_ROUTER_DESTINATION_SETTINGS="dT.throttle=20/1s")
    users = [f"user-{i}" for i in range(8)]
    jobs, sent = interleaved("dT", sink.url + "/t", users, 10, "t")
    t0 = time.time()
    want = produce_until_delivered(env, sink, jobs, sent, "every throttled job delivered", 40)
    time.sleep(1.0)
    recs = arrivals(sink)
    ts = sorted(r["t"] for r in recs)
    # When the router sent each job: its succeeded row's last_attempt_at (the attempt's start).
    sends = wait(env, "a succeeded row per throttled job", lambda: (lambda r: sorted(
        float(x[0]) for x in r) if len(r) >= len(want) else None)(sql(
            env, "SELECT extract(epoch FROM last_attempt_at) * 1000 FROM sluice_jobs "
                 "WHERE destination_id = 'dT' AND state = 'succeeded'")), timeout=20)

    def worst(times):
        """The most times within any 1 s, and where that window starts."""
        return max((sum(1 for x in times[i:] if x < t + 1000), i) for i, t in enumerate(times))
    sent_worst, si = worst(sends)
    got_worst, gi = worst(ts)
    per_second = collections.Counter(t // 1000 for t in ts)
    from_first = collections.Counter((t - ts[0]) // 1000 for t in ts)
    h.log(f"throttle: {len(ts)} requests over {(ts[-1] - ts[0]) / 1000:.1f} s "
          f"({time.time() - t0:.1f} s from producing); most in any 1 s: {sent_worst} sent "
          f"(router's attempt times), {got_worst} received (sink's times); received per "
          f"wall-clock second: {sorted(per_second.values(), reverse=True)[:6]}, per second "
          f"from the first: {[from_first[k] for k in sorted(from_first)]}; "
          f"throttled_total {metric(rt, 'sluice_router_throttled_total', 'dT')}")
    # At most the limit per window, +1 for the window's edges. At the sink, +1 more: a
    # request's trip may be a few ms late (the first ones open connections), which can bring
    # one more into a window. A throttle by fixed windows lets up to twice the limit through.
    if sent_worst > 21 or got_worst > 22:
        h.log("send times (ms after the first) from the worst window: " +
              str([round(x - sends[0]) for x in sends[si:si + sent_worst + 2]]))
        h.log("arrival times (ms after the first) from the worst window: " +
              str([x - ts[0] for x in ts[gi:gi + got_worst + 2]]))
        h.fail(f"{sent_worst} jobs sent and {got_worst} received within 1 s; the throttle "
               "is 20/1s")
    if len(set(mids(recs))) != len(want) or len(recs) != len(want):
        h.fail(f"{len(recs)} requests for {len(want)} jobs (lost or duplicated)")
    check_user_order("throttled", mids(recs), sent)


def status_command_exists(env):
    r = subprocess.run([h.SLUICE, "status", "--help"], capture_output=True, text=True,
                       timeout=30, env=env.base_env())
    return not (r.returncode != 0 and "unknown command" in r.stderr)


def find_values(o):
    if isinstance(o, dict):
        for k, v in o.items():
            yield k
            yield from find_values(v)
    elif isinstance(o, list):
        for v in o:
            yield from find_values(v)
    else:
        yield o


def case_status(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url + "/webhook", write_key=KEY))
    gw = env.start("gateway", **KAFKA_FAST)
    pr = env.start("processor", **KAFKA_FAST)
    rt = start_router(env)
    env.wait_healthy(gw)
    env.wait_healthy(pr)
    mid = f"st-{uuid.uuid4()}"
    st, body, _ = h.http("POST", gw.url + "/v1/track",
                         {"userId": "status-user", "event": "Paid", "messageId": mid},
                         write_key=KEY)
    if st != 200:
        h.fail(f"gateway: {st} {body!r}")
    t0 = time.time()
    wait(env, "the event at the sink", lambda: mid in mids(arrivals(sink)), timeout=30,
               interval=0.05)
    h.log(f"gateway -> processor -> router -> sink in {(time.time() - t0) * 1000:.0f} ms")
    rows = wait(env, "its succeeded row", lambda: [
        r for r in sql(env, "SELECT destination_id, state, attempts FROM sluice_jobs "
                            f"WHERE message_id = {q(mid)}") if r[1] == "succeeded"],
        timeout=30)
    if rows[0][0] != "dst-webhook":
        h.fail(f"status row: {rows}")

    if not status_command_exists(env):
        h.log("SKIP: `sluice status` does not exist yet (cmd/status.c not in this build); "
              "the delivery and its succeeded row were checked")
        env.ok = True
        raise SystemExit(SKIP)
    cenv = dict(rt.env)
    r = subprocess.run([h.SLUICE, "status", mid], capture_output=True, text=True, timeout=30,
                       env=cenv)
    h.log(f"sluice status {mid}:\n{r.stdout}{r.stderr}")
    if r.returncode != 0 or "dst-webhook" not in r.stdout or "succeeded" not in r.stdout:
        h.fail(f"sluice status: exit {r.returncode}, want the destination and `succeeded`")
    r = subprocess.run([h.SLUICE, "status", "--json", mid], capture_output=True, text=True,
                       timeout=30, env=cenv)
    try:
        doc = json.loads(r.stdout)
    except ValueError as e:
        h.fail(f"sluice status --json: not JSON ({e}): exit {r.returncode} {r.stdout[:800]} "
               f"{r.stderr[-400:]}")
    vals = set(v for v in find_values(doc) if isinstance(v, str))
    if r.returncode != 0 or "dst-webhook" not in vals or "succeeded" not in vals:
        h.fail(f"sluice status --json: exit {r.returncode}: {r.stdout[:800]}")
    r = subprocess.run([h.SLUICE, "status", "no-such-message"], capture_output=True,
                       text=True, timeout=30, env=cenv)
    h.log(f"sluice status no-such-message: exit {r.returncode}: {(r.stdout + r.stderr)[:200]}")


def case_batch(env):
    sink = h.Sink(env)
    workspace(env, [amplitude("dAM"), webhook("dW", sink.url + "/w")])
    rt = start_router(env, SLUICE_ROUTER_DESTINATION_SETTINGS="dW.batch=10")
    users = [f"user-{i}" for i in range(5)]
    prefix, sep, suffix = '{"api_key":"am-key","events":[', ",", "]}"
    batch = {"key": "AM:e2e0000000000001", "maxEvents": 25, "maxBytes": 1000000,
             "prefix": prefix, "separator": sep, "suffix": suffix}
    am_jobs, am_sent = [], {u: [] for u in users}
    for i in range(40):
        for u in users:
            mid = f"am-{u}-{i}"
            el = {"user_id": u, "insert_id": mid, "event_type": "Seq", "time": 1,
                  "event_properties": {"seq": i}}
            am_jobs.append(job("dAM", u, mid, sink.url + "/am", prefix + json.dumps(el) + suffix,
                               dtype="AM", batch=batch))
            am_sent[u].append(mid)
    w_jobs, w_sent = interleaved("dW", sink.url + "/w", users, 20, "w")
    t0 = time.time()
    produce(env, am_jobs + w_jobs)
    am_want = {m for ms in am_sent.values() for m in ms}
    w_want = {m for ms in w_sent.values() for m in ms}

    def events_at(path):
        """The merged requests at path, and their events in arrival order."""
        reqs, evs = [], []
        for r in arrivals(sink, path):
            b = r["body"]
            if path == "/am":
                if not isinstance(b, dict) or b.get("api_key") != "am-key" or \
                        not isinstance(b.get("events"), list):
                    h.fail(f"an Amplitude batch that is not the envelope: {r['raw'][:300]}")
                items = b["events"]
            elif isinstance(b, list):
                items = b
            elif isinstance(b, dict) and "messageId" in b:
                items = [b]  # not merged
            else:
                h.fail(f"a WEBHOOK request that is neither an event nor a JSON array of "
                       f"events: {r['raw'][:300]}")
            reqs.append(items)
            evs.extend(items)
        return reqs, evs
    wait(env, "every batched event", lambda: am_want <= {
        e.get("insert_id") for e in events_at("/am")[1]} and w_want <= {
        e.get("messageId") for e in events_at("/w")[1]}, timeout=30, interval=0.3)
    h.log(f"all {len(am_want) + len(w_want)} events delivered {time.time() - t0:.1f} s after "
          "producing")
    time.sleep(1.0)
    for path, want, sent, idf, cap in (("/am", am_want, am_sent, "insert_id", 25),
                                       ("/w", w_want, w_sent, "messageId", 10)):
        reqs, evs = events_at(path)
        sizes = [len(x) for x in reqs]
        h.log(f"{path}: the first request's body: {arrivals(sink, path)[0]['raw'][:160]}")
        h.log(f"{path}: {len(evs)} events in {len(reqs)} requests; events per request: "
              f"{sorted(collections.Counter(sizes).items())}")
        ids = [e.get(idf) for e in evs]
        if len(ids) != len(set(ids)) or set(ids) != want:
            h.fail(f"{path}: {len(ids)} events, {len(set(ids))} distinct, want {len(want)}")
        if len(reqs) >= len(want):
            h.fail(f"{path}: {len(reqs)} requests for {len(want)} events: nothing was merged")
        if max(sizes) > cap:
            h.fail(f"{path}: a request of {max(sizes)} events; at most {cap} per request")
        check_user_order(path, ids, sent)


def worker_partitions(p):
    """{worker: partitions assigned} from the router's sluice_router_partitions gauges."""
    _, body, _ = h.http("GET", p.url + "/metrics")
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("sluice_router_partitions{"):
            w = line.split('worker="', 1)[1].split('"', 1)[0]
            out[w] = float(line.rsplit(" ", 1)[1])
    return out


def case_workers(env):
    sink = h.Sink(env)
    workspace(env, [webhook("dW", sink.url + "/w")])
    rt = start_router(env, SLUICE_ROUTER_WORKERS="2",
                      SLUICE_ROUTER_DESTINATION_SETTINGS="dW.throttle=20/1s")
    parts = wait(env, "both workers assigned partitions", lambda: (lambda w: w if len(w) == 2
                 and all(v > 0 for v in w.values()) else None)(worker_partitions(rt)),
                 timeout=30, interval=0.3)
    h.log(f"partitions per worker: {parts}")
    users = ["user-U"] + [f"user-{i}" for i in range(15)]
    jobs, sent = interleaved("dW", sink.url + "/w", users, 8, "w")
    n_fail = 3
    sink.set_mode(status=503, match='"user-U"', count=n_fail)
    t0 = time.time()
    want = produce_until_delivered(env, sink, jobs, sent, "every event at the sink", 60)
    time.sleep(0.5)
    recs = arrivals(sink)
    ok = [r for r in recs if r["body"]["userId"] != "user-U"] + \
        [r for r in recs if r["body"]["userId"] == "user-U"][n_fail:]
    ok.sort(key=lambda r: r["t"])
    check_user_order("two workers", mids(ok), sent)
    if len(mids(ok)) != len(want):
        h.fail(f"{len(mids(ok)) - len(want)} events delivered twice")
    ts = sorted(r["t"] for r in recs)
    most = max(sum(1 for x in ts[i:] if x < t + 1000) for i, t in enumerate(ts))
    h.log(f"{len(want)} events over {(ts[-1] - ts[0]) / 1000:.1f} s ({time.time() - t0:.1f} s "
          f"from producing), most in any 1 s at the sink: {most}")
    # Each worker allows half of 20/1s, +1 at a window's edge, and arrivals at the sink may
    # bunch by one or two more; unshared, the two would let up to 40 through.
    if most > 26:
        h.fail(f"{most} requests within 1 s: the two workers did not share the 20/1s throttle")


def case_rebalance(env):
    a, c = h.Sink(env), h.Sink(env)
    workspace(env, [webhook("dA", a.url + "/a"), webhook("dC", c.url + "/c")])
    c.set_mode(status=200, delay_ms=60000)  # C stalls: each request until router.timeout
    slow = {"SLUICE_ROUTER_TIMEOUT": "20s"}
    r1 = start_router(env, **slow)
    users = [f"user-{i}" for i in range(4)]
    jc, sc = interleaved("dC", c.url + "/c", users, 3, "c")
    ja, sa = interleaved("dA", a.url + "/a", users, 5, "a1")
    produce(env, jc + ja)
    want_a = {m for ms in sa.values() for m in ms}
    wait(env, "A's first events", lambda: want_a <= set(mids(arrivals(a))), timeout=20)
    wait(env, "C's first requests in flight", lambda: len(c.requests()) >= len(users),
         timeout=20)
    start_router(env, name="router2", **slow)
    wait(env, "the rebalance to reach router 1", lambda: "partitions revoked" in r1.output(),
         timeout=30, interval=0.05)
    t0 = time.time()
    ja2, sa2 = interleaved("dA", a.url + "/a", users, 5, "a2")
    produce(env, ja2)
    want_a2 = {m for ms in sa2.values() for m in ms}
    wait(env, "A's events produced during the rebalance",
         lambda: want_a2 <= set(mids(arrivals(a))), timeout=30, interval=0.2)
    took = time.time() - t0
    h.log(f"A's events produced once router 1 saw the rebalance arrived {took:.1f} s later "
          f"(C's requests time out after 20 s)")
    if took > 12:
        h.fail(f"A's events took {took:.1f} s through the rebalance: it waited for the stalled "
               "destination's requests")
    check_user_order("A", mids(arrivals(a)), {u: sa[u] + sa2[u] for u in users})
    c.set_mode(status=200)
    want_c = {m for ms in sc.values() for m in ms}
    wait(env, "C's events once it answers again", lambda: want_c <= set(mids(arrivals(c))),
         timeout=60, interval=0.5)
    check_user_order("C", last_arrival_order(arrivals(c)), sc)
    h.log(f"C: {len(arrivals(c))} requests for {len(want_c)} events (requests given up at the "
          "rebalance are sent again by the partitions' next owner)")
    if "left to the partitions' next owner" not in r1.output():
        h.fail("router 1 gave up no request at the rebalance: C's requests should have been "
               "in flight")


CASES = {"retry": case_retry, "order": case_order, "isolation": case_isolation,
         "restart": case_restart, "throttle": case_throttle, "status": case_status,
         "batch": case_batch, "workers": case_workers, "rebalance": case_rebalance}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    a = ap.parse_args()

    def run(env):
        t0 = time.time()
        h.create_topics(env)
        CASES[a.case](env)
        h.log(f"case {a.case}: {time.time() - t0:.1f} s")
    h.run(run, "router-" + a.case, kafka="real")
