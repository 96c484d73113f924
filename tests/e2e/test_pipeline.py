"""The walking skeleton, end to end: POST /v1/track with a valid writeKey -> gateway ->
events topic keyed by user -> processor -> delivery topic -> router -> the WEBHOOK
destination (a local sink), and the job's final status in Postgres.

Usage: test_pipeline.py --kafka real|embedded
"""
import argparse
import json
import subprocess
import time

import harness as h


def check_pipeline(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("all")
    env.wait_healthy(p)

    # Bad writeKeys never reach Kafka.
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1"))
    assert status == 401, (status, body)
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1"), write_key="nope")
    assert status == 401 and b"invalid write key" in body, (status, body)
    status, body, _ = h.http("POST", p.url + "/v1/track", {"event": "x"}, write_key="e2e-write-key")
    assert status == 400 and b"userId" in body, (status, body)

    # One event, as the README's curl sends it.
    t0 = time.time()
    status, body, _ = h.http("POST", p.url + "/v1/track", {"userId": "u1", "event": "Signed Up"},
                             write_key="e2e-write-key")
    ack = time.time() - t0
    assert status == 200 and body == b"OK", (status, body)
    got = h.wait_for("the event at the sink", lambda: sink.events(), timeout=30, interval=0.02)
    arrival = time.time() - t0
    ev = got[0]
    h.log(f"acknowledged after {ack * 1000:.1f} ms, arrived at the sink after "
          f"{arrival * 1000:.1f} ms")
    assert ev["type"] == "track" and ev["event"] == "Signed Up" and ev["userId"] == "u1", ev
    for field in ("messageId", "receivedAt", "rudderId", "request_ip"):
        assert ev.get(field), (field, ev)
    req = sink.requests()[0]
    assert req["method"] == "POST" and req["path"] == "/webhook", req
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers.get("x-test") == "e2e", headers
    mid = ev["messageId"]

    # A messageId the client chose is kept; several users, several types, in order per user.
    sent = []
    for i in range(20):
        user = f"user-{i % 3}"
        mid_i = f"e2e-{i}"
        kind = ["track", "identify", "page"][i % 3]
        event = {"userId": user, "messageId": mid_i, "properties": {"seq": i}}
        if kind == "track":
            event["event"] = "Clicked"
        status, body, _ = h.http("POST", f"{p.url}/v1/{kind}", event, write_key="e2e-write-key")
        assert status == 200, (status, body)
        sent.append((user, mid_i))
    status, body, _ = h.http("POST", p.url + "/v1/batch",
                             {"batch": [h.track("u9", messageId="b1", type="track"),
                                        {"type": "identify", "anonymousId": "a9",
                                         "messageId": "b2", "traits": {"x": 1}}]},
                             write_key="e2e-write-key")
    assert status == 200, (status, body)
    want = {m for _, m in sent} | {mid, "b1", "b2"}
    h.wait_for("every event at the sink", lambda: want <= set(sink.message_ids()), timeout=60)
    arrived = sink.message_ids()
    for user in {u for u, _ in sent}:
        order = [m for m in arrived if m in {mm for uu, mm in sent if uu == user}]
        expect = [m for uu, m in sent if uu == user]
        assert order == expect, (user, order, expect)

    # The router recorded each job's final state.
    def jobs_done():
        rows = h.psql(env.dsn, "SELECT message_id, state, attempts FROM sluice_jobs")
        return rows if {r[0] for r in rows} >= want else None
    rows = h.wait_for("job status rows", jobs_done, timeout=30)
    states = {r[0]: r[1] for r in rows}
    assert states[mid] == "succeeded", rows
    assert all(s == "succeeded" for s in states.values()), rows

    if env.kafka == "real":
        # The events topic holds the event JSON keyed by the user (rudderId).
        out = subprocess.run(["kcat", "-b", env.brokers, "-C", "-t", env.prefix + "events",
                              "-o", "beginning", "-e", "-q", "-f", "%k %s\\n"],
                             capture_output=True, text=True, timeout=60).stdout
        line = next(l for l in out.splitlines() if mid in l)
        key, value = line.split(" ", 1)
        assert json.loads(value)["messageId"] == mid
        assert key == ev["rudderId"], (key, ev["rudderId"])
        h.log(f"kcat: {line[:160]}")

    assert p.stop() == 0, p.output()[-3000:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kafka", choices=["real", "embedded"], required=True)
    args = ap.parse_args()
    h.run(check_pipeline, f"pipeline-{args.kafka}", kafka=args.kafka)


if __name__ == "__main__":
    main()
