#!/usr/bin/env python3
"""Tracing end to end (README "Tracing"): a W3C traceparent sent to the gateway reaches the
destination with the same trace id and a new, valid span id per delivery attempt (tracestate
passed along); a request without one, or with an invalid one, gets a fresh trace (the invalid
one and its tracestate are not propagated); a batch's events share the request's trace; and
`sluice status <messageId> [--json]` shows the trace and the time spent in each stage, in
order."""
import json
import re
import subprocess
import time

import harness as h

KEY = "e2e-write-key"
TRACE_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
POINTS = ["receivedAt", "enqueuedAt", "pickedAt", "processedAt", "routedAt", "firstAttemptAt",
          "completedAt"]

IN_TRACE, IN_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
# Invalid traceparents (W3C Trace Context: the receiver starts a new trace), by messageId.
INVALID = {
    "inv-upper": "00-5BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    "inv-zero-trace": "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "inv-zero-span": "00-6bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "inv-version-ff": "ff-7bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "inv-v00-longer": "00-8bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
    "inv-short": "00-9bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "inv-garbage": "hello",
}


def parse_tp(value, what):
    m = TRACE_RE.match(value or "")
    if not m or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
        h.fail(f"{what}: not a valid version 00 traceparent: {value!r}")
    return m.group(1), m.group(2), m.group(3)


def send(url, path, body, headers=None):
    status, resp, _ = h.http("POST", url + path, body, write_key=KEY, headers=headers)
    if status != 200:
        h.fail(f"POST {path}: {status} {resp[:200]}")


def status_cmd(env, mid, *args):
    return subprocess.run([h.SLUICE, "status", mid, *args], env=env.sluice_env(),
                          capture_output=True, text=True, timeout=30)


def test(env):
    h.create_topics(env)
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("all")
    env.wait_healthy(p)
    # The first request of one event fails (503): it is parked and retried (retry_base 200ms).
    sink.set_mode(status=503, match="trace-retry", count=1)

    t_start = time.time()
    tp_in = f"00-{IN_TRACE}-{IN_SPAN}-01"
    send(p.url, "/v1/track", h.track("u1", messageId="trace-in"),
         {"traceparent": tp_in, "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"})
    send(p.url, "/v1/track", h.track("u2", messageId="trace-none"))
    for mid, tp in INVALID.items():
        send(p.url, "/v1/track", h.track("u3", messageId=mid),
             {"traceparent": tp, "tracestate": "bad=1"})
    # A higher version is read by its first four fields and handed on as version 00.
    send(p.url, "/v1/track", h.track("u4", messageId="trace-v1"),
         {"traceparent": "01-abf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future"})
    batch_tp = "00-cbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    send(p.url, "/v1/batch",
         {"batch": [h.track(f"u{5 + i}", messageId=f"trace-batch-{i}", type="track")
                    for i in range(3)]},
         {"traceparent": batch_tp})
    retry_tp = "00-dbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    send(p.url, "/v1/track", h.track("u9", messageId="trace-retry"), {"traceparent": retry_tp})

    want = {"trace-in", "trace-none", "trace-v1", "trace-retry"} | set(INVALID) | {
        f"trace-batch-{i}" for i in range(3)}

    def arrived():
        got = {}
        for r in sink.requests():
            try:
                mid = json.loads(r["body"]).get("messageId")
            except ValueError:
                continue
            got.setdefault(mid, []).append({k.lower(): v for k, v in r["headers"].items()})
        ok = want <= set(got) and len(got["trace-retry"]) >= 2
        return got if ok else None
    got = h.wait_for("every event at the sink (the retried one twice)", arrived, timeout=30)

    # Continued: same trace id and flags, a new span id, tracestate passed on.
    hd = got["trace-in"][0]
    trace, span, flags = parse_tp(hd.get("traceparent"), "trace-in")
    h.log(f"sent traceparent {tp_in}, the sink got {hd['traceparent']}")
    if trace != IN_TRACE or span == IN_SPAN or flags != "01":
        h.fail(f"trace-in: {hd['traceparent']} does not continue {tp_in}")
    if hd.get("tracestate") != "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7":
        h.fail(f"trace-in: tracestate {hd.get('tracestate')!r}")
    in_span = span

    # None sent: a fresh trace, each request its own.
    fresh = set()
    for mid in ["trace-none"] + list(INVALID):
        hd = got[mid][0]
        trace, span, _ = parse_tp(hd.get("traceparent"), mid)
        sent = INVALID.get(mid, "").lower()
        if trace in sent or span in sent or trace in fresh:
            h.fail(f"{mid}: {hd['traceparent']} propagates the invalid {sent!r} or repeats")
        if "tracestate" in hd:
            h.fail(f"{mid}: the tracestate of an invalid traceparent was passed on: {hd}")
        fresh.add(trace)
    h.log(f"no or invalid traceparent: {len(fresh)} fresh traces, e.g. "
          f"{got['inv-upper'][0]['traceparent']}")

    trace, span, flags = parse_tp(got["trace-v1"][0].get("traceparent"), "trace-v1")
    if trace != "abf92f3577b34da6a3ce929d0e0e4736" or flags != "00":
        h.fail(f"trace-v1: {got['trace-v1'][0]['traceparent']}")

    spans = set()
    for i in range(3):
        trace, span, _ = parse_tp(got[f"trace-batch-{i}"][0].get("traceparent"), "batch")
        if trace != batch_tp[3:35]:
            h.fail(f"trace-batch-{i}: trace {trace}, want the request's {batch_tp[3:35]}")
        spans.add(span)
    if len(spans) != 3:
        h.fail(f"the batch's deliveries share span ids: {spans}")

    # Each delivery attempt is its own span of the same trace.
    attempts = [parse_tp(x.get("traceparent"), "trace-retry") for x in got["trace-retry"]]
    if {a[0] for a in attempts} != {retry_tp[3:35]} or len({a[1] for a in attempts}) != 2:
        h.fail(f"trace-retry attempts: {attempts}")
    h.log(f"trace-retry: attempt spans {[a[1] for a in attempts]}")
    t_end = time.time()

    # `sluice status --json`: the trace and the stages, in order and within the test's time.
    def final_status(mid):
        def check():
            out = status_cmd(env, mid, "--json")
            if out.returncode != 0:
                return None
            doc = json.loads(out.stdout)
            d = doc["destinations"][0]
            return doc if any(s.get("state") == "succeeded" for s in d["steps"]) else None
        return h.wait_for(f"the succeeded status of {mid}", check, timeout=20, interval=0.2)

    for mid, want_trace, want_span in [("trace-in", IN_TRACE, in_span),
                                       ("trace-retry", retry_tp[3:35], attempts[-1][1])]:
        doc = final_status(mid)
        d = doc["destinations"][0]
        h.log(f"sluice status {mid} --json: traceId {doc.get('traceId')}, trace {d.get('trace')},"
              f" timeline {json.dumps(d.get('timeline'))}")
        if doc.get("traceId") != want_trace or d["trace"].get("traceId") != want_trace:
            h.fail(f"{mid}: status trace {doc.get('traceId')} / {d['trace']}, want {want_trace}")
        if d["trace"].get("spanId") != want_span:
            h.fail(f"{mid}: status span {d['trace']}, want the last attempt's {want_span}")
        if not re.match(r"^[0-9a-f]{16}$", d["trace"].get("parentSpanId", "")):
            h.fail(f"{mid}: parent span {d['trace']}")
        tl = d["timeline"]
        missing = [k for k in POINTS if k not in tl]
        if missing:
            h.fail(f"{mid}: timeline lacks {missing}: {tl}")
        ms = [h.iso_ms(tl[k]) for k in POINTS]
        if ms != sorted(ms):
            h.fail(f"{mid}: the stage times are not in order: {tl}")
        if ms[0] < (t_start - 1) * 1000 or ms[-1] > (t_end + 1) * 1000:
            h.fail(f"{mid}: stage times outside the test's run "
                   f"({t_start:.3f}..{t_end:.3f}): {tl}")
        stages = tl["stages"]
        if [s["stage"] for s in stages] != ["gateway", "events topic", "processor",
                                            "delivery topic", "router queue", "delivery"]:
            h.fail(f"{mid}: stages {stages}")
        if any(s["ms"] != ms[i + 1] - ms[i] for i, s in enumerate(stages)) or \
                tl["totalMs"] != ms[-1] - ms[0]:
            h.fail(f"{mid}: stage durations do not add up: {tl}")
    retry_steps = [s["state"] for s in d["steps"]]
    if retry_steps[:1] != ["failed"] or "succeeded" not in retry_steps:
        h.fail(f"trace-retry steps: {d['steps']}")

    out = status_cmd(env, "trace-in")
    h.log("sluice status trace-in:\n" + out.stdout)
    for want_text in [f"trace {IN_TRACE}", f"span {in_span}", "received by the gateway",
                      "stored in the events topic", "read by the processor",
                      "produced by the processor", "read by the router",
                      "first delivery attempt", "delivered", "total"]:
        if want_text not in out.stdout:
            h.fail(f"`sluice status trace-in` lacks {want_text!r}")
    assert p.stop() == 0, p.output()[-3000:]


if __name__ == "__main__":
    h.run(test, "trace")
