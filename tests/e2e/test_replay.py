"""`sluice replay` against the real Kafka: events spread over six minutes of event time are
delivered live to one WEBHOOK destination; a second destination is added and one minute of
them is replayed to it. Exactly the events of that minute arrive there, the live destination
receives nothing twice (the live processor runs with dedup on, which must not swallow the
replay), the dry run counts what the replay sends, and a replay killed part way (SIGKILL, then
SIGTERM) resumes and delivers each event of its window exactly once. The live processor is
not rebalanced by any of it.

The events are the gateway's own output: a gateway writes them to a capture topic, and
sluice-test-produce-at writes them (value, key, headers unchanged) to the pipeline's events
topic with back-dated Kafka timestamps, six seconds apart.
"""
import json
import os
import re
import signal
import subprocess
import time

import harness as h

N = 60
STEP_MS = 6000          # six minutes of event time
PRODUCE_AT = os.environ.get("SLUICE_TEST_PRODUCE_AT", "sluice-test-produce-at")


def webhook(dest_id, url):
    return {"id": dest_id, "name": dest_id, "enabled": True,
            "config": {"webhookUrl": url + "/webhook", "webhookMethod": "POST"},
            "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook",
                                      "config": {"supportedMessageTypes": ["track"]}}}


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def replay(env, *args, check=None):
    r = subprocess.run([h.SLUICE, "replay"] + list(args), env=env.sluice_env(),
                       capture_output=True, text=True, timeout=120)
    h.log(f"$ sluice replay {' '.join(args)}  -> exit {r.returncode}\n{r.stdout}{r.stderr}")
    if check is not None and r.returncode != check:
        h.fail(f"sluice replay exited {r.returncode}, expected {check}")
    return r


def captured_events(env):
    """N events through a real gateway into a capture topic; returns them as Kafka has them."""
    capture = env.prefix + "capture."
    h.create_topics(env, ("capture.events",))
    gw = env.start("gateway", name="capture-gateway", SLUICE_KAFKA_TOPIC_PREFIX=capture)
    env.wait_healthy(gw)
    batch = [h.track(f"user-{i % 7}", event="Replay Test", type="track", messageId=f"m-{i:02d}")
             for i in range(N)]
    status, body, _ = h.http("POST", gw.url + "/v1/batch", {"batch": batch},
                             write_key="e2e-write-key")
    assert status == 200, (status, body)
    assert gw.stop() == 0
    msgs = h.kafka_messages(env.brokers, capture + "events")
    assert len(msgs) == N, len(msgs)
    return sorted(msgs, key=lambda m: json.loads(m["value"])["messageId"])


def test(env):
    sink1, sink2, sink3 = h.Sink(env), h.Sink(env), h.Sink(env)
    ws = h.workspace_config(sink1.url)
    ws["sources"][0]["destinations"] = [webhook("dst-live", sink1.url)]
    env.write_workspace(ws)
    h.create_topics(env)
    msgs = captured_events(env)

    # Back-dated: event i at base + i * 6 s, the last one a minute ago.
    base = (int(time.time() * 1000) - N * STEP_MS - 60000) // 1000 * 1000
    lines = [json.dumps({"topic": env.prefix + "events", "key": m["key"], "value": m["value"],
                         "headers": m["headers"], "ts": base + i * STEP_MS})
             for i, m in enumerate(msgs)]
    r = subprocess.run([PRODUCE_AT, env.brokers], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == str(N), (r.returncode, r.stdout, r.stderr)
    ids = [json.loads(m["value"])["messageId"] for m in msgs]

    p = env.start("all", SLUICE_PROCESSOR_DEDUP="true")
    env.wait_healthy(p)
    h.wait_for("every event at the live destination", lambda: len(sink1.message_ids()) >= N,
               timeout=60)
    assert sorted(sink1.message_ids()) == sorted(ids)
    # The live processor's assignments (with dedup on, each one rebuilds its window): a replay
    # that joined its group would cause another.
    assignments = p.output().count("dedup: rebuilt the window")

    ws["sources"][0]["destinations"] += [webhook("dst-new", sink2.url),
                                          webhook("dst-resume", sink3.url)]
    env.write_workspace(ws)

    # One minute: events 20..29 (the window's start is included, its end is not).
    frm, to = base + 120000, base + 180000
    want = ids[20:30]
    per_partition = {}
    for ev in h.kafka_events(env.brokers, env.prefix + "events"):
        if frm <= ev["_kafka"]["ts"] < to:
            per_partition[ev["_kafka"]["partition"]] = \
                per_partition.get(ev["_kafka"]["partition"], 0) + 1
    dry = replay(env, "--from", iso(frm), "--to", iso(to), "--destination", "dst-new",
                 "--dry-run", check=0)
    got = {int(p_): int(n) for p_, n in
           re.findall(r"^partition (\d+): offsets \d+-\d+ \((\d+) events\)", dry.stdout, re.M)}
    assert {k: v for k, v in got.items() if v} == per_partition, (got, per_partition)
    assert f"total: {len(want)} events" in dry.stdout, dry.stdout
    time.sleep(0.5)
    assert sink2.message_ids() == [], "the dry run sent something"

    replay(env, "--from", iso(frm), "--to", iso(to), "--destination", "dst-new", check=0)
    h.wait_for("the window at the new destination", lambda: len(sink2.message_ids()) >= 10,
               timeout=30)
    # Running the same command again resumes the finished replay: nothing more is sent.
    again = replay(env, "--from", iso(frm), "--to", iso(to), "--destination", "dst-new",
                   check=0)
    assert "already finished" in again.stdout, again.stdout

    # Interrupted: the whole six minutes to dst-resume, 15 events/s, killed, stopped, resumed.
    args = ["--from", iso(base), "--to", iso(base + N * STEP_MS), "--destination",
            "dst-resume", "--name", "resume-test"]

    def run_until(done_at_least, sig, extra):
        proc = h.Proc(f"replay-{sig}", [h.SLUICE, "replay"] + extra, env.sluice_env(),
                      env.workdir)
        env.procs.append(proc)

        def progressed():
            if not proc.alive():
                h.fail(f"the replay ended early:\n{proc.output()}")
            m = re.findall(r"replay resume-test: (\d+)/%d events" % N, proc.output())
            return m and int(m[-1]) >= done_at_least
        h.wait_for(f"the replay to pass {done_at_least} events", progressed, timeout=30,
                   interval=0.05)
        proc.signal(sig)
        code = proc.p.wait(30)
        h.log(f"replay after {sig.name}: exit {code}\n{proc.output()}")
        return code, proc.output()

    code, _ = run_until(10, signal.SIGKILL, args + ["--rate", "15"])
    assert code == -9, code
    code, out = run_until(30, signal.SIGTERM, ["--resume", "resume-test", "--rate", "15"])
    assert code == 1 and "interrupted at" in out and "resuming" in out, (code, out)
    assert re.search(r"interrupted at (\d+)/60", out), out
    done = replay(env, *args, check=0)  # the same command continues it
    assert "resuming" in done.stderr and "finished" in done.stdout, done.stderr
    h.wait_for("the six minutes at dst-resume", lambda: len(sink3.message_ids()) >= N,
               timeout=30)
    lst = replay(env, "--list", check=0)
    assert re.search(r"^resume-test\s.*finished 60", lst.stdout, re.M), lst.stdout

    time.sleep(1.5)  # anything sent twice would be there by now
    got2, got3, got1 = sink2.message_ids(), sink3.message_ids(), sink1.message_ids()
    assert sorted(got2) == sorted(want), f"new destination got {sorted(got2)}, want {want}"
    assert sorted(got3) == sorted(ids), f"{len(got3)} at dst-resume: " \
        f"duplicates {sorted({i for i in got3 if got3.count(i) > 1})}, " \
        f"missing {sorted(set(ids) - set(got3))}"
    assert sorted(got1) == sorted(ids), f"the live destination got {len(got1)} events"
    h.log(f"window {iso(frm)}..{iso(to)}: {len(got2)} events at dst-new {sorted(got2)}; "
          f"dst-resume {len(got3)} distinct {len(set(got3))}; live {len(got1)}")
    assert p.output().count("dedup: rebuilt the window") == assignments, \
        "the live processor was rebalanced during the replays"
    assert p.stop() == 0


if __name__ == "__main__":
    h.run(test, "replay")
