#!/usr/bin/env python3
"""The processor end to end.

  --case rules         selection rules (types, integrations, consent, allow/deny lists),
                       timestamp correction, dead letters, config changes without a restart
  --case transform     JavaScript user transformations: one, drop, many, log, metadata; a throw,
                       an infinite loop and a memory bomb become dead letters while others flow
  --case dedup         the messageId window, across a restart (dev broker)
  --case exactly-once  SIGKILL the processor mid-stream on the real Kafka: every event is in
                       the delivery topic exactly once for read_committed consumers
"""
import argparse
import json
import os
import signal
import subprocess
import threading
import time
import uuid

import harness as h

KEY = "e2e-write-key"


def webhook(dest_id, url, **config):
    cfg = {"webhookUrl": url, "webhookMethod": "POST"}
    types = config.pop("types", ["track", "identify", "page", "screen", "group", "alias"])
    cfg.update(config)
    return {"id": dest_id, "name": dest_id, "enabled": True, "config": cfg,
            "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook",
                                      "config": {"supportedMessageTypes": types}}}


def config(dests):
    cfg = h.workspace_config("http://127.0.0.1:9", write_key=KEY)
    cfg["sources"][0]["destinations"] = dests
    return cfg


def send(p, path, ev):
    st, body, _ = h.http("POST", p.url + path, ev, write_key=KEY)
    if st != 200:
        h.fail(f"POST {path}: {st} {body!r}")


def by_path(sink):
    out = {}
    for r in sink.requests():
        try:
            ev = json.loads(r["body"])
        except (KeyError, TypeError, ValueError):
            continue
        out.setdefault(r["path"], []).append(ev)
    return out


def case_rules(env):
    sink = h.Sink(env)
    u = sink.url
    env.write_workspace(config([
        webhook("d-all", u + "/all"),
        webhook("d-track", u + "/track", types=["track"]),
        webhook("d-consent", u + "/consent",
                oneTrustCookieCategories=[{"oneTrustCookieCategory": "C0004"}]),
        webhook("d-allow", u + "/allow", eventFilteringOption="whitelistedEvents",
                whitelistedEvents=[{"eventName": "Order Completed"}]),
        webhook("d-deny", u + "/deny", eventFilteringOption="blacklistedEvents",
                blacklistedEvents=[{"eventName": "Page Scrolled"}]),
        {"id": "d-hubspot", "name": "hs", "enabled": True, "config": {"apiKey": "x"},
         "destinationDefinition": {"name": "HS", "displayName": "HubSpot", "config": {}}},
        dict(webhook("d-off", u + "/off"), enabled=False),
        webhook("d-broken", ""),  # no webhookUrl: its events fail until the config is fixed
    ]))
    dev = h.DevKafka(env)
    p = env.start("all", SLUICE_KAFKA_BROKERS=dev.bootstrap)
    env.wait_healthy(p)

    order = {"userId": "u1", "event": "Order Completed", "messageId": "m-order",
             "originalTimestamp": "2026-11-26T11:00:05.000Z", "sentAt": "2026-11-26T11:00:07.000Z"}
    scroll = {"userId": "u1", "event": "Page Scrolled", "messageId": "m-scroll",
              "timestamp": "2020-01-01T00:00:00.000Z"}
    ident = {"userId": "u1", "messageId": "m-ident", "traits": {"plan": "pro"}}
    denied = {"userId": "u2", "event": "Order Completed", "messageId": "m-denied",
              "context": {"consentManagement": {"deniedConsentIds": ["C0004"]}}}
    nowhere = {"userId": "u3", "event": "Order Completed", "messageId": "m-nowhere",
               "integrations": {"All": False}}
    only = {"userId": "u3", "event": "Order Completed", "messageId": "m-only",
            "integrations": {"All": False, "Webhook": True}}
    send(p, "/v1/track", order)
    send(p, "/v1/track", scroll)
    send(p, "/v1/identify", ident)
    send(p, "/v1/track", denied)
    send(p, "/v1/track", nowhere)
    send(p, "/v1/track", only)

    want = {
        "/all": {"m-order", "m-scroll", "m-ident", "m-denied", "m-only"},
        "/track": {"m-order", "m-scroll", "m-denied", "m-only"},
        "/consent": {"m-order", "m-scroll", "m-ident", "m-only"},
        "/allow": {"m-order", "m-ident", "m-denied", "m-only"},
        "/deny": {"m-order", "m-ident", "m-denied", "m-only"},
    }

    def arrived():
        got = {k: {e["messageId"] for e in v} for k, v in by_path(sink).items()}
        return got if all(want[k] <= got.get(k, set()) for k in want) else None
    h.wait_for("every selected event at its destination", arrived, timeout=30)
    time.sleep(1.0)  # anything that should not arrive has had time to
    got = {k: [e["messageId"] for e in v] for k, v in by_path(sink).items()}
    for k in want:
        if sorted(got.get(k, [])) != sorted(want[k]):
            h.fail(f"{k}: got {sorted(got.get(k, []))}, want {sorted(want[k])}")
    if "/off" in got:
        h.fail("a disabled destination got events")

    # Timestamp correction: kept when valid, else receivedAt - (sentAt - originalTimestamp).
    evs = {e["messageId"]: e for e in by_path(sink)["/all"]}
    if evs["m-scroll"]["timestamp"] != "2020-01-01T00:00:00.000Z":
        h.fail(f"a valid timestamp was changed: {evs['m-scroll']}")
    o = evs["m-order"]
    recv = h.iso_ms(o["receivedAt"])
    if abs(h.iso_ms(o["timestamp"]) - (recv - 2000)) > 1:
        h.fail(f"timestamp correction: {o['timestamp']} for receivedAt {o['receivedAt']}")

    # The unsupported destination type: one dead letter per event, with the reason.
    # (m-only names only "Webhook" in its integrations, so HubSpot never sees it.)
    def letters():
        out = [json.loads(m["value"]) for m in h.kafka_messages(dev.bootstrap, env.prefix + "failed")]
        return out if len(out) >= 9 else None
    dl = h.wait_for("dead letters", letters, timeout=20)
    hs = [d for d in dl if d["destinationId"] == "d-hubspot"]
    broken = [d for d in dl if d["destinationId"] == "d-broken"]
    if {d["messageId"] for d in hs} != {"m-order", "m-scroll", "m-ident", "m-denied"} \
            or any("not supported" not in d["reason"] or "event" not in d
                   or d["stage"] != "destination_transformation" for d in hs):
        h.fail(f"dead letters for HS: {hs}")
    if {d["messageId"] for d in broken} != want["/all"] or \
            any("webhookUrl" not in d["reason"] for d in broken):
        h.fail(f"dead letters for the broken webhook: {broken}")

    # They are in Postgres too; `sluice failed list` shows them.
    def rows():
        r = h.psql(env.dsn, "SELECT destination_id, message_id FROM sluice_failed_events")
        return r if len(r) >= 9 else None
    h.wait_for("dead letters in sluice_failed_events", rows, timeout=20)
    fenv = dict(p.env)
    out = subprocess.run([h.SLUICE, "failed", "list", "--destination", "d-broken"], env=fenv,
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or out.stdout.count("webhookUrl") != 5:
        h.fail(f"sluice failed list: {out.returncode} {out.stdout} {out.stderr}")

    # Fix the cause, then retry: the events reach that destination, and only that one.
    cfg = json.load(open(env.ws_path))
    for d in cfg["sources"][0]["destinations"]:
        if d["id"] == "d-broken":
            d["config"]["webhookUrl"] = u + "/fixed"
    env.write_workspace(cfg)
    time.sleep(1.5)  # the config is polled every 200 ms here
    out = subprocess.run([h.SLUICE, "failed", "retry", "--destination", "d-broken"], env=fenv,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or "retried 5 dead letters" not in out.stdout:
        h.fail(f"sluice failed retry: {out.returncode} {out.stdout} {out.stderr}")
    h.wait_for("the retried events at the fixed destination",
               lambda: len(by_path(sink).get("/fixed", [])) >= 5, timeout=30)
    time.sleep(1.0)
    got = {k: sorted(e["messageId"] for e in v) for k, v in by_path(sink).items()}
    if got["/fixed"] != sorted(want["/all"]) or got["/all"] != sorted(want["/all"]):
        h.fail(f"after the retry: {got}")
    out = subprocess.run([h.SLUICE, "failed", "list", "--destination", "d-broken"], env=fenv,
                         capture_output=True, text=True, timeout=30)
    if "webhookUrl" in out.stdout:
        h.fail(f"retried dead letters are still listed as pending: {out.stdout}")

    # A router's dead letter holds the delivery job: `retry` produces it unchanged to the
    # delivery topic, keyed by its userKey (not through the processor), and it is delivered.
    # The job is a real one of d-all, pointed at another path so its delivery shows.
    jobs = [json.loads(m["value"]) for m in h.kafka_messages(dev.bootstrap, env.prefix + "delivery")]
    job = next(j for j in jobs if j["messageId"] == "m-order" and j["destinationId"] == "d-all")
    job["request"]["url"] = u + "/router-retry"
    letter = json.dumps(job, separators=(",", ":"))
    rows = h.psql(env.dsn, "INSERT INTO sluice_failed_events (failed_at, stage, reason, "
                  "source_id, destination_id, destination_type, message_id, event, user_key, "
                  "failed_topic, failed_partition, failed_offset) VALUES (now(), 'router', "
                  "'HTTP 400: no such user', $$" + job["sourceId"] + "$$, 'd-all', 'WEBHOOK', "
                  "'m-order', $j$" + letter + "$j$, 'stale-key', 'x', 0, 1) RETURNING id")
    out = subprocess.run([h.SLUICE, "failed", "list", "--destination", "d-all"], env=fenv,
                         capture_output=True, text=True, timeout=30)
    line = next((s for s in out.stdout.splitlines() if "no such user" in s), "")
    if out.returncode != 0 or " router " not in line:
        h.fail(f"sluice failed list does not show the router's dead letter: {out.stdout}")
    out = subprocess.run([h.SLUICE, "failed", "retry", "--id", rows[0][0]], env=fenv,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or "retried 1 dead letter" not in out.stdout:
        h.fail(f"sluice failed retry of the router's dead letter: {out.returncode} {out.stdout} "
               f"{out.stderr}")
    again = [m for m in h.kafka_messages(dev.bootstrap, env.prefix + "delivery")
             if m["value"] == letter]
    if len(again) != 1 or again[0]["key"] != job["userKey"]:
        h.fail(f"the job in the delivery topic: {again}")
    if any(m["value"] == letter for m in h.kafka_messages(dev.bootstrap, env.prefix + "events")):
        h.fail("the router's dead letter was sent to the events topic")
    h.wait_for("the retried job at its destination",
               lambda: by_path(sink).get("/router-retry"), timeout=30)

    # A config change applies to new events within seconds, without a restart.
    cfg = json.load(open(env.ws_path))
    cfg["sources"][0]["destinations"].append(webhook("d-late", u + "/late"))
    env.write_workspace(cfg)
    t0 = time.time()

    def late():
        send(p, "/v1/track", {"userId": "u4", "event": "Late", "messageId": str(uuid.uuid4())})
        return by_path(sink).get("/late")
    h.wait_for("an event at a destination added to the config", late, timeout=20, interval=0.5)
    h.log(f"new destination served {time.time() - t0:.1f} s after the config changed")


TX_CODE = r"""
function transformEvent(event, metadata) {
  var m = metadata(event);
  event.properties = event.properties || {};
  event.properties.tx = m.destinationId + '/' + m.eventType + '/' + m.sourceId;
  if (event.event === 'Drop') return null;
  if (event.event === 'Fan')
    return [event, {type: 'track', event: 'Fan2', userId: event.userId,
                    messageId: event.messageId + '-2'}];
  if (event.event === 'Throw') {
    var x = undefined;
    return x.boom;
  }
  if (event.event === 'Loop') { while (true) {} }
  if (event.event === 'Bomb') { var a = []; while (true) a.push({n: a.length, s: 'y' + a.length}); }
  log('saw', event.event);
  return event;
}
"""


def case_transform(env):
    sink = h.Sink(env)
    txdir = os.path.join(env.workdir, "transformations")
    os.makedirs(txdir)
    with open(os.path.join(txdir, "v-dir.js"), "w") as f:
        f.write("function transformBatch(events, metadata) {\n"
                "  return events.map(function (e) { e.fromDir = true; return e; });\n}\n")
    code_dest = webhook("d-code", sink.url + "/code")
    code_dest["transformations"] = [{"versionId": "v-code", "code": TX_CODE}]
    dir_dest = webhook("d-dir", sink.url + "/dir")
    dir_dest["transformations"] = [{"versionId": "v-dir"}]
    env.write_workspace(config([code_dest, dir_dest]))
    dev = h.DevKafka(env)
    p = env.start("all", SLUICE_KAFKA_BROKERS=dev.bootstrap,
                  SLUICE_PROCESSOR_TRANSFORMATIONS_DIR=txdir,
                  SLUICE_PROCESSOR_TRANSFORMATION_TIME_LIMIT="1500ms",
                  SLUICE_PROCESSOR_TRANSFORMATION_MEMORY_LIMIT="16MB")
    env.wait_healthy(p)
    for name in ["Normal", "Drop", "Fan", "Throw", "Loop", "Bomb", "After"]:
        send(p, "/v1/track", {"userId": "tx-user", "event": name, "messageId": "tx-" + name})

    def done():
        got = by_path(sink)
        code_ids = [e["messageId"] for e in got.get("/code", [])]
        return got if "tx-After" in code_ids and len(got.get("/dir", [])) >= 7 else None
    got = h.wait_for("the events after the failing ones", done, timeout=60)
    code = {e["messageId"]: e for e in got["/code"]}
    if sorted(code) != sorted(["tx-Normal", "tx-Fan", "tx-Fan-2", "tx-After"]):
        h.fail(f"/code got {sorted(code)}")
    if code["tx-Normal"]["properties"]["tx"] != "d-code/track/src-e2e":
        h.fail(f"metadata() in the transformation: {code['tx-Normal']['properties']}")
    if code["tx-Fan-2"]["event"] != "Fan2":
        h.fail(f"fan-out: {code['tx-Fan-2']}")
    if not all(e.get("fromDir") for e in got["/dir"]):
        h.fail(f"transformBatch from the directory: {got['/dir']}")
    if "saw Normal" not in p.output() or "v-code" not in p.output():
        h.fail("log() did not reach the processor log")

    def letters():
        out = [json.loads(m["value"])
               for m in h.kafka_messages(dev.bootstrap, env.prefix + "failed")]
        return out if len(out) >= 3 else None
    dl = {d["messageId"]: d for d in h.wait_for("dead letters", letters, timeout=30)}
    if sorted(dl) != ["tx-Bomb", "tx-Loop", "tx-Throw"]:
        h.fail(f"dead letters: {sorted(dl)}")
    for mid, want in [("tx-Throw", "line"), ("tx-Loop", "timed out")]:
        if want not in dl[mid]["reason"] or dl[mid]["stage"] != "user_transformation":
            h.fail(f"{mid}: {dl[mid]}")
    if not any(w in dl["tx-Bomb"]["reason"] for w in ("memory", "timed out")):
        h.fail(f"memory bomb: {dl['tx-Bomb']}")
    h.log("dead letters: " + "; ".join(f"{k}: {v['reason']}" for k, v in sorted(dl.items())))
    dropped = ('sluice_processor_transformation_dropped_total'
               '{source="src-e2e",destination="d-code"} 1')
    if dropped not in h.http("GET", p.url + "/metrics")[1].decode():
        h.fail("the dropped event is not counted")

    # A batch of 120 for one transformation runs as two sandbox calls at once: a throw and an
    # infinite loop among them still fail alone.
    big = [{"type": "track", "userId": "tx-big", "event": "Normal", "messageId": f"tx-big-{i}"}
           for i in range(120)]
    big[30]["event"], big[90]["event"] = "Throw", "Loop"
    st, body, _ = h.http("POST", p.url + "/v1/batch", {"batch": big}, write_key=KEY)
    if st != 200:
        h.fail(f"/v1/batch: {st} {body!r}")
    want = {e["messageId"] for e in big if e["event"] == "Normal"}
    h.wait_for("the 118 good events of the big batch",
               lambda: want <= {e["messageId"] for e in by_path(sink).get("/code", [])},
               timeout=60)
    dl = {d["messageId"]: d for d in h.wait_for("their dead letters", lambda: (
        lambda out: out if len(out) >= 5 else None)(
            [json.loads(m["value"]) for m in h.kafka_messages(dev.bootstrap,
                                                               env.prefix + "failed")]),
        timeout=30)}
    for mid, want_reason in [("tx-big-30", "line"), ("tx-big-90", "timed out")]:
        if mid not in dl or want_reason not in dl[mid]["reason"]:
            h.fail(f"{mid}: {dl.get(mid)}")


def case_dedup(env):
    sink = h.Sink(env)
    env.write_workspace(config([webhook("d-all", sink.url + "/all")]))
    # Real Kafka: the dev broker's group coordinator is slow to let a restarted member back in.
    over = dict(SLUICE_PROCESSOR_DEDUP="true", SLUICE_PROCESSOR_DEDUP_WINDOW="600s")
    p = env.start("all", **over)
    env.wait_healthy(p)
    x = {"userId": "dup-user", "event": "Paid", "messageId": "dup-x"}
    send(p, "/v1/track", x)
    send(p, "/v1/track", x)  # an SDK retry
    send(p, "/v1/batch", {"batch": [dict(x, type="track"),
                                    {"type": "track", "userId": "dup-user", "event": "Other",
                                     "messageId": "dup-y"}]})
    h.wait_for("dup-y", lambda: "dup-y" in sink.message_ids(), timeout=30)
    time.sleep(1.0)
    if sink.message_ids().count("dup-x") != 1:
        h.fail(f"dup-x delivered {sink.message_ids().count('dup-x')} times before the restart")

    # Restart: the window is rebuilt from the events topic.
    p.stop()
    q = env.start("all", **dict(over, SLUICE_GATEWAY_PORT=p.env["SLUICE_GATEWAY_PORT"],
                               SLUICE_PROCESSOR_PORT=p.env["SLUICE_PROCESSOR_PORT"]))
    env.wait_healthy(q)
    send(q, "/v1/track", x)
    send(q, "/v1/track", {"userId": "dup-user", "event": "After", "messageId": "dup-z"})
    h.wait_for("dup-z", lambda: "dup-z" in sink.message_ids(), timeout=30)
    time.sleep(1.0)
    ids = sink.message_ids()
    if ids.count("dup-x") != 1 or ids.count("dup-y") != 1 or ids.count("dup-z") != 1:
        h.fail(f"after the restart: {ids}")
    if "rebuilt the window" not in q.output():
        h.fail("the processor did not rebuild its dedup window at start")
    st, body, _ = h.http("GET", q.url + "/metrics")
    if 'sluice_processor_duplicates_total{source="src-e2e"} 1' not in body.decode():
        h.fail("the duplicate after the restart is not counted")


def case_dev_restart(env):
    """The dev broker stores no offsets committed in a transaction: a restarted processor must
    still go on where it stopped, not start the events topic over."""
    sink = h.Sink(env)
    env.write_workspace(config([webhook("d-all", sink.url + "/all")]))
    dev = h.DevKafka(env)
    # The dev broker lets a restarted member back into its group only after the session of
    # the one it replaces has run out.
    over = dict(SLUICE_KAFKA_BROKERS=dev.bootstrap, SLUICE_PROCESSOR_DEDUP="false",
                SLUICE_KAFKA_SESSION_TIMEOUT_MS="6000", SLUICE_KAFKA_HEARTBEAT_INTERVAL_MS="1000")
    p = env.start("all", **over)
    env.wait_healthy(p)
    before = [f"dr-{i}" for i in range(20)]
    for i, mid in enumerate(before):
        send(p, "/v1/track", {"userId": f"dr-user-{i % 5}", "event": "E", "messageId": mid})
    h.wait_for("the first 20 events", lambda: set(before) <= set(sink.message_ids()),
               timeout=30)
    p.stop()
    q = env.start("all", **dict(over, SLUICE_GATEWAY_PORT=p.env["SLUICE_GATEWAY_PORT"],
                               SLUICE_PROCESSOR_PORT=p.env["SLUICE_PROCESSOR_PORT"]))
    env.wait_healthy(q)
    send(q, "/v1/track", {"userId": "dr-user-0", "event": "After", "messageId": "dr-after"})
    h.wait_for("dr-after", lambda: "dr-after" in sink.message_ids(), timeout=60)
    time.sleep(2.0)
    ids = sink.message_ids()
    again = sorted(m for m in set(ids) if ids.count(m) > 1)
    if again:
        h.fail(f"delivered again after the processor's restart: {again}")
    jobs = h.kafka_messages(dev.bootstrap, env.prefix + "delivery")
    if len(jobs) != 21:
        h.fail(f"the delivery topic holds {len(jobs)} jobs for 21 events")
    h.log(f"{len(ids)} deliveries and {len(jobs)} jobs for 21 events, across a restart")


def metric_value(text, name, label):
    """The value of the sample of name whose labels include label (e.g. 'outcome="abort"')."""
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def case_commit_fails(env):
    """The processor commits each transaction in the background while it processes the next
    events, whose jobs wait for the next transaction. When a commit fails, those jobs are
    dropped with it and the events read again: each acknowledged event is still delivered."""
    sink = h.Sink(env)
    env.write_workspace(config([webhook("d-all", sink.url + "/all")]))
    dev = h.DevKafka(env)
    p = env.start("all", SLUICE_KAFKA_BROKERS=dev.bootstrap, SLUICE_PROCESSOR_DEDUP="false")
    env.wait_healthy(p)
    sent, stop = [], threading.Event()

    def client():
        i = 0
        while not stop.is_set():
            batch = [{"type": "track", "userId": f"u{(i + k) % 31}", "event": "E",
                      "messageId": f"cf-{i + k}"} for k in range(50)]
            i += 50
            st, _, _ = h.http("POST", p.url + "/v1/batch", {"batch": batch}, write_key=KEY)
            if st == 200:
                sent.extend(b["messageId"] for b in batch)
            time.sleep(0.005)

    def aborts():
        return metric_value(h.http("GET", p.url + "/metrics")[1].decode(),
                            "sluice_processor_transactions_total", 'outcome="abort"')
    t = threading.Thread(target=client)
    t.start()
    try:
        h.wait_for("events flowing", lambda: len(sent) >= 1000, timeout=60)
        for _ in range(5):  # adding partitions to a transaction fails: it must be aborted
            status, body, _ = h.http("POST", dev.control + "/errors?api=AddPartitionsToTxn&"
                                     "error=TOPIC_AUTHORIZATION_FAILED&count=1", b"")
            if status != 200:
                h.fail(f"dev-kafka control: {status} {body[:200]}")
            deadline = time.time() + 5
            while aborts() < 1 and time.time() < deadline:
                time.sleep(0.2)
            if aborts() >= 1:
                break
        mark = len(sent)
        h.wait_for("events flowing after the abort", lambda: len(sent) >= mark + 1000,
                   timeout=60)
    finally:
        stop.set()
        t.join(30)
    if aborts() < 1:
        h.fail("no transaction was aborted: the injected errors did not fail a commit")
    want = set(sent)
    h.wait_for("every acknowledged event at the sink", lambda: want <= set(sink.message_ids()),
               timeout=60, interval=1)
    h.log(f"{len(want)} acknowledged events all delivered across {aborts():.0f} aborted "
          f"transactions")


def read_committed(brokers, topic):
    r = subprocess.run(["kcat", "-C", "-b", brokers, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-X", "isolation.level=read_committed", "-f", "%h\n"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        if "Unknown topic" in r.stderr:
            return []  # not created yet: the processor has not produced anything so far
        h.fail(f"kcat: {r.stderr[-500:]}")
    ids = []
    for line in r.stdout.splitlines():
        for part in line.split(","):
            if part.startswith("sluice-message-id="):
                ids.append(part.split("=", 1)[1])
    return ids


def case_exactly_once(env):
    env.write_workspace(config([webhook("d-all", "http://127.0.0.1:9/all")]))
    gw = env.start("gateway")
    env.wait_healthy(gw)
    # A killed member leaves no LeaveGroup: a short session lets the restarted one in sooner.
    fast = dict(SLUICE_KAFKA_SESSION_TIMEOUT_MS="6000", SLUICE_KAFKA_HEARTBEAT_INTERVAL_MS="1000")
    pr = env.start("processor", **fast)
    env.wait_healthy(pr)
    sent, stop = [], threading.Event()

    def client():
        i = 0
        while not stop.is_set():
            batch = []
            for _ in range(50):
                mid = f"eo-{i}"
                i += 1
                batch.append({"type": "track", "userId": f"u{i % 97}", "event": "E",
                              "messageId": mid})
            st, _, _ = h.http("POST", gw.url + "/v1/batch", {"batch": batch}, write_key=KEY)
            if st == 200:
                sent.extend(b["messageId"] for b in batch)
            time.sleep(0.01)
    t = threading.Thread(target=client)
    t.start()
    try:
        for _ in range(2):
            mark = len(sent)
            h.wait_for("events flowing", lambda: len(sent) >= mark + 500, timeout=60)
            h.log(f"SIGKILL the processor after {len(sent)} events")
            pr.signal(signal.SIGKILL)
            pr.p.wait(10)
            pr = env.start("processor", name="processor-again",
                           SLUICE_PROCESSOR_PORT=pr.env["SLUICE_PROCESSOR_PORT"], **fast)
            env.wait_healthy(pr)
        time.sleep(2.0)
    finally:
        stop.set()
        t.join(30)
    want = set(sent)
    h.log(f"{len(want)} events acknowledged by the gateway")
    topic = env.prefix + "delivery"

    def complete():
        ids = read_committed(env.brokers, topic)
        return ids if want <= set(ids) else None
    ids = h.wait_for("every acknowledged event in the delivery topic", complete, timeout=90,
                     interval=2)
    dups = len(ids) - len(set(ids))
    if dups:
        h.fail(f"{dups} events are in the delivery topic more than once for read_committed")
    h.log(f"{len(ids)} jobs, each exactly once, across two SIGKILLs of the processor")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True,
                    choices=["rules", "transform", "dedup", "exactly-once", "dev-restart",
                             "commit-fails"])
    a = ap.parse_args()
    if a.case == "exactly-once":
        h.run(case_exactly_once, "processor-eo", kafka="real")
    elif a.case == "transform":
        h.run(case_transform, "processor-transform", kafka="embedded")
    elif a.case == "commit-fails":
        h.run(case_commit_fails, "processor-commitfail", kafka="embedded")
    elif a.case == "dev-restart":
        h.run(case_dev_restart, "processor-devrestart", kafka="embedded")
    elif a.case == "dedup":
        h.run(case_dedup, "processor-dedup", kafka="real")
    else:
        h.run(case_rules, "processor-rules", kafka="embedded")
