#!/usr/bin/env python3
"""The gateway's HTTP API as SDKs and users see it: every endpoint, every bad input of the
reference with its status and JSON error, enrichment as read back from Kafka, CORS, rate
limits, suppressed users and the in-flight cap. Runs `sluice gateway` on the dev broker.

  --case api        endpoints, bad inputs, enrichment, CORS, built-in routes, metrics
  --case limits     rate limits (per source, per workspace) and suppressed users
  --case capacity   the in-flight cap: past it, 503 at once instead of growing
"""
import argparse
import base64
import gzip
import json
import re
import threading
import time
import urllib.parse
import uuid

import harness as h

KEY = "api-key"
GIF_MAGIC = b"GIF89a"


def config(extra=None):
    cfg = h.workspace_config("http://127.0.0.1:9", write_key=KEY, extra_sources=[
        {"id": "src-off", "name": "disabled", "writeKey": "off-key", "enabled": False,
         "sourceDefinition": {"name": "HTTP", "category": "eventStream"}, "destinations": []},
        {"id": "src-hook", "name": "webhook", "writeKey": "hook-key", "enabled": True,
         "config": {"event": "stripe_event"},
         "sourceDefinition": {"name": "webhook", "category": "webhook"}, "destinations": []},
        {"id": "src-two", "name": "second", "writeKey": "two-key", "enabled": True,
         "sourceDefinition": {"name": "HTTP", "category": "eventStream"}, "destinations": []},
    ])
    cfg.update(extra or {})
    return cfg


def start(env, dev, **overrides):
    p = env.start("gateway", SLUICE_KAFKA_BROKERS=dev.bootstrap, **overrides)
    env.wait_healthy(p)
    return p


def post(p, path, body, key=KEY, headers=None, raw=False):
    data = body if raw else json.dumps(body).encode()
    return h.http("POST", p.url + path, data, write_key=key, headers=headers)


def error_of(body):
    try:
        doc = json.loads(body)
    except ValueError:
        h.fail(f"error body is not JSON: {body[:200]!r}")
    if not isinstance(doc.get("error"), str) or not doc["error"]:
        h.fail(f"error body has no \"error\" text: {doc}")
    return doc


def expect(resp, status, contains=None, index=None, what=""):
    st, body, hdrs = resp
    if st != status:
        h.fail(f"{what}: expected {status}, got {st} {body[:300]!r}")
    if status != 200:
        doc = error_of(body)
        if contains and contains.lower() not in doc["error"].lower():
            h.fail(f"{what}: error {doc['error']!r} does not mention {contains!r}")
        if index is not None and doc.get("index") != index:
            h.fail(f"{what}: expected index {index}, got {doc}")
    elif body != b"OK":
        h.fail(f"{what}: 200 body is {body[:100]!r}, not OK")
    return hdrs


def ev(user="u1", **fields):
    e = {"userId": user, "event": "Signed Up", "messageId": str(uuid.uuid4()),
         "properties": {"plan": "pro"}}
    e.update(fields)
    return e


def events_by_id(env, dev, want, timeout=30):
    """Reads the events topic until every messageId in want is there; returns {id: event}."""
    topic = env.prefix + "events"
    deadline = time.time() + timeout
    while True:
        got = {e.get("messageId"): e for e in h.kafka_events(dev.bootstrap, topic)}
        if all(w in got for w in want) or time.time() > deadline:
            return got
        time.sleep(0.3)


def case_api(env):
    env.write_workspace(config())
    dev = h.DevKafka(env)
    p = start(env, dev)
    accepted = []  # messageIds that got 200

    # --- every endpoint ---
    for t, extra in [("track", {}), ("identify", {"traits": {"a": 1}}), ("page", {"name": "Home"}),
                     ("screen", {"name": "Main"}), ("group", {"groupId": "g1"}),
                     ("alias", {"previousId": "old-1"})]:
        e = ev(**extra)
        expect(post(p, f"/v1/{t}", e), 200, what=f"/v1/{t}")
        accepted.append((e["messageId"], t))
    batch = [dict(ev(user=f"b{i}"), type="track") for i in range(3)]
    expect(post(p, "/v1/batch", {"batch": batch, "sentAt": "2026-01-01T00:00:00.000Z"}), 200,
           what="/v1/batch")
    accepted += [(e["messageId"], "track") for e in batch]
    imp = [dict(ev(user="imp"), type="identify") for _ in range(50)]
    expect(post(p, "/v1/import", {"batch": imp}), 200, what="/v1/import")
    accepted += [(e["messageId"], "identify") for e in imp]
    beacon = dict(ev(user="beacon"), type="page")
    expect(h.http("POST", p.url + "/beacon/v1/batch?writeKey=" + KEY,
                  json.dumps({"batch": [beacon]}).encode(), headers={"Content-Type": "text/plain"}),
           200, what="/beacon/v1/batch")
    accepted.append((beacon["messageId"], "page"))
    gz = ev(user="gzip")
    expect(post(p, "/v1/track", gzip.compress(json.dumps(gz).encode()),
                headers={"Content-Encoding": "gzip"}, raw=True), 200, what="gzip body")
    accepted.append((gz["messageId"], "track"))

    # webhook: POST any JSON (object or not), GET query; writeKey in the query
    st, body, _ = h.http("POST", p.url + "/v1/webhook?writeKey=hook-key",
                         json.dumps({"id": "evt_1", "amount": 42}).encode())
    if st != 200:
        h.fail(f"/v1/webhook POST: {st} {body!r}")
    st, body, _ = h.http("POST", p.url + "/v1/webhook?writeKey=hook-key", b"[1,2,3]")
    if st != 200:
        h.fail(f"/v1/webhook POST array: {st} {body!r}")
    st, body, _ = h.http("GET", p.url + "/v1/webhook?writeKey=hook-key&ping=yes&a.b=c")
    if st != 200:
        h.fail(f"/v1/webhook GET: {st} {body!r}")

    # pixel: query parameters become fields; always a GIF
    pix_id = str(uuid.uuid4())
    q = urllib.parse.urlencode({"writeKey": KEY, "anonymousId": "pix-anon", "event": "Opened",
                                "messageId": pix_id, "properties.campaign": "spring",
                                "context.page.path": "/mail"})
    st, body, hdrs = h.http("GET", p.url + "/pixel/v1/track?" + q)
    if st != 200 or not body.startswith(GIF_MAGIC) or hdrs.get("Content-Type") != "image/gif":
        h.fail(f"/pixel/v1/track: {st} {hdrs.get('Content-Type')} {body[:20]!r}")
    accepted.append((pix_id, "track"))
    pix_page = str(uuid.uuid4())
    st, body, _ = h.http("GET", p.url + "/pixel/v1/page?" + urllib.parse.urlencode(
        {"writeKey": KEY, "anonymousId": "pix-anon", "messageId": pix_page, "name": "Landing"}))
    if st != 200 or not body.startswith(GIF_MAGIC):
        h.fail(f"/pixel/v1/page: {st} {body[:20]!r}")
    accepted.append((pix_page, "page"))
    st, body, hdrs = h.http("GET", p.url + "/pixel/v1/track?anonymousId=x&event=y")
    if st != 401 or not body.startswith(GIF_MAGIC) or not hdrs.get("X-Sluice-Error"):
        h.fail(f"/pixel/v1/track without writeKey: {st} {hdrs} {body[:20]!r}")

    # --- every bad input of the reference, with a JSON error naming the problem ---
    good = ev(user="never")
    expect(h.http("POST", p.url + "/v1/track", json.dumps(good).encode()), 401, "write key",
           what="no key")
    expect(post(p, "/v1/track", good, key="nope"), 401, "invalid write key", what="unknown key")
    expect(post(p, "/v1/track", good, key="off-key"), 404, "source is disabled", what="disabled")
    expect(post(p, "/v1/track", b'{"userId": "u1", "event": ', raw=True), 400, "invalid JSON",
           what="truncated JSON")
    expect(post(p, "/v1/track", b'{"userId": "u1"} x', raw=True), 400, "after the JSON value",
           what="trailing data")
    expect(post(p, "/v1/track", b'{"userId": "\xff\xfe", "event": "x"}', raw=True), 400,
           "UTF-8", what="invalid UTF-8")
    expect(post(p, "/v1/track", b'{"userId":"u","event":"x","p":' + b"[" * 40 + b"]" * 40 + b"}",
                raw=True), 400, "nesting", what="deep nesting")
    expect(post(p, "/v1/track", b"", raw=True), 400, "empty", what="empty body")
    expect(post(p, "/v1/track", [good]), 400, "object", what="array body")
    expect(post(p, "/v1/track", {"event": "x"}), 400, "userId", what="no user")
    expect(post(p, "/v1/track", {"userId": "u1"}), 400, "event", what="track without event")
    expect(post(p, "/v1/group", {"userId": "u1"}), 400, "groupId", what="group without groupId")
    expect(post(p, "/v1/alias", {"userId": "u1"}), 400, "previousId", what="alias w/o previousId")
    expect(post(p, "/v1/batch", {"batch": []}), 400, "empty", what="empty batch")
    expect(post(p, "/v1/batch", {"events": []}), 400, "batch", what="no batch array")
    b_ok = [dict(ev(user="half"), type="track") for _ in range(2)]
    expect(post(p, "/v1/batch", {"batch": b_ok + ["not an object"]}), 400, "object", index=2,
           what="batch element not an object")
    expect(post(p, "/v1/batch", {"batch": [b_ok[0], {"type": "track", "event": "e"}]}), 400,
           "userId", index=1, what="batch event without user")
    expect(post(p, "/v1/batch", {"batch": [dict(b_ok[0], type="click")]}), 400, "type", index=0,
           what="batch event with a bad type")
    big = dict(ev(user="big"), properties={"blob": "x" * 40000})
    expect(post(p, "/v1/batch", {"batch": [b_ok[1], dict(big, type="track")]}), 413, "limit",
           index=1, what="event over 32 KB")
    huge = {"batch": [dict(ev(user="huge"), type="track", properties={"blob": "y" * 20000})
                      for _ in range(220)]}
    expect(post(p, "/v1/batch", huge), 413, "limit", what="request over 4000 KB")
    expect(post(p, "/v1/track", b"\x1f\x8b\x08\x00garbage", raw=True,
                headers={"Content-Encoding": "gzip"}), 400, "gzip", what="bad gzip")
    expect(post(p, "/v2/track", good), 404, "no such endpoint", what="unknown path")
    expect(h.http("GET", p.url + "/v1/track", write_key=KEY), 405, "not allowed",
           what="wrong method")
    # Nothing of a rejected request reached Kafka (b_ok were in rejected batches only).
    st, _, _ = h.http("GET", p.url + "/health")
    if st != 200:
        h.fail(f"/health after bad inputs: {st}")

    # --- CORS ---
    st, _, hdrs = h.http("OPTIONS", p.url + "/v1/batch", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,anonymousid"})
    if st not in (200, 204) or hdrs.get("Access-Control-Allow-Origin") != "https://shop.example" \
            or "POST" not in hdrs.get("Access-Control-Allow-Methods", "") \
            or "authorization" not in hdrs.get("Access-Control-Allow-Headers", "").lower():
        h.fail(f"CORS preflight: {st} {hdrs}")
    cors_ev = ev(user="cors")
    hdrs = expect(post(p, "/v1/track", cors_ev, headers={"Origin": "https://shop.example"}), 200,
                  what="CORS POST")
    if hdrs.get("Access-Control-Allow-Origin") != "https://shop.example":
        h.fail(f"CORS: no Access-Control-Allow-Origin on the answer: {hdrs}")
    accepted.append((cors_ev["messageId"], "track"))

    # --- enrichment, read back from Kafka ---
    xff = ev(user="xff-user", anonymousId="anon-9", context={"library": {"name": "test"}})
    expect(post(p, "/v1/track", xff, headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}), 200,
           what="X-Forwarded-For")
    no_id = {"anonymousId": "anon-no-id", "event": "Generated", "type": "identify",
             "receivedAt": "1999-01-01T00:00:00Z", "rudderId": "forged"}
    expect(post(p, "/v1/track", no_id), 200, what="no messageId")
    got = events_by_id(env, dev, [m for m, _ in accepted] + [xff["messageId"]])
    for mid, t in accepted:
        e = got.get(mid)
        if not e:
            h.fail(f"event {mid} ({t}) answered 200 is not in Kafka")
        if e.get("type") != t:
            h.fail(f"event {mid}: type {e.get('type')!r}, expected {t!r}")
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e.get("receivedAt", "")):
            h.fail(f"event {mid}: receivedAt {e.get('receivedAt')!r}")
        if e["_kafka"]["key"] != e.get("rudderId") or len(e.get("rudderId", "")) != 36:
            h.fail(f"event {mid}: key {e['_kafka']['key']!r} vs rudderId {e.get('rudderId')!r}")
        if e["_kafka"]["headers"].get("sluice-source-id") != "src-e2e":
            h.fail(f"event {mid}: headers {e['_kafka']['headers']}")
        if e.get("request_ip") != "127.0.0.1" or e.get("context", {}).get("ip") != "127.0.0.1":
            h.fail(f"event {mid}: request_ip {e.get('request_ip')!r} context {e.get('context')}")
    batch_ev = got[batch[0]["messageId"]]
    if batch_ev.get("sentAt") != "2026-01-01T00:00:00.000Z":
        h.fail(f"the batch's sentAt was not copied into its events: {batch_ev}")
    pix = got[pix_id]
    if pix.get("properties", {}).get("campaign") != "spring" or \
            pix.get("context", {}).get("page", {}).get("path") != "/mail" or \
            pix.get("anonymousId") != "pix-anon" or pix.get("event") != "Opened":
        h.fail(f"pixel fields: {pix}")
    x = got[xff["messageId"]]
    if x.get("request_ip") != "203.0.113.7" or x["context"].get("ip") != "203.0.113.7" or \
            x["context"].get("library") != {"name": "test"}:
        h.fail(f"X-Forwarded-For enrichment: {x}")
    same_user = [e for e in got.values() if e.get("userId") == "imp"]
    if len({e["rudderId"] for e in same_user}) != 1 or len({e["_kafka"]["partition"]
                                                           for e in same_user}) != 1:
        h.fail("one user's events got different rudderIds or partitions")
    gen = [e for e in got.values() if e.get("anonymousId") == "anon-no-id"]
    if len(gen) != 1 or len(gen[0].get("messageId", "")) != 36 or gen[0]["type"] != "track" \
            or gen[0]["rudderId"] == "forged" or gen[0]["receivedAt"].startswith("1999"):
        h.fail(f"generated messageId / overridden fields: {gen}")
    hooks = [e for e in got.values() if e.get("event") == "stripe_event"]
    if len(hooks) != 3 or not any(e["properties"] == {"id": "evt_1", "amount": 42}
                                  for e in hooks) or \
            not any(e["properties"] == {"body": [1, 2, 3]} for e in hooks) or \
            not any(e["properties"] == {"ping": "yes", "a": {"b": "c"}} for e in hooks) or \
            any(e["type"] != "track" or not e.get("anonymousId") for e in hooks):
        h.fail(f"webhook events: {hooks}")
    for e in got.values():
        if e.get("userId") in ("never", "half", "big", "huge"):
            h.fail(f"an event of a rejected request reached Kafka: {e}")

    # --- built-in routes and metrics ---
    st, body, _ = h.http("GET", p.url + "/version")
    if st != 200 or "version" not in json.loads(body):
        h.fail(f"/version: {st} {body!r}")
    st, body, _ = h.http("GET", p.url + "/metrics")
    text = body.decode()
    for needle in ['sluice_gateway_requests_total{source="src-e2e",endpoint="track",status="200"}',
                   'sluice_gateway_requests_total{source="src-e2e",endpoint="batch",status="400"}',
                   'sluice_gateway_events_total{source="src-e2e",endpoint="import"} 50',
                   'sluice_gateway_request_bytes_total{source="src-e2e",endpoint="batch"}',
                   'sluice_gateway_rejections_total{reason="invalid_write_key"} 1',
                   'sluice_gateway_rejections_total{reason="no_user"}',
                   'sluice_http_rejections_total{component="gateway",reason="body_too_large"} 1',
                   'sluice_gateway_request_seconds_bucket{endpoint="track",le=',
                   'sluice_gateway_kafka_ack_seconds_count']:
        if needle not in text:
            h.fail(f"/metrics lacks {needle}")


def case_limits(env):
    env.write_workspace(config({"suppressedUsers": [
        {"userId": "gone-everywhere"}, {"userId": "gone-here", "sourceIds": ["src-e2e"]}]}))
    dev = h.DevKafka(env)
    p = start(env, dev, SLUICE_GATEWAY_SOURCE_RATE_LIMIT="10",
              SLUICE_GATEWAY_RATE_LIMIT_WINDOW="60s")

    # Suppressed users: 200, dropped, counted; the same user on another source flows.
    sup = [dict(ev(user="gone-everywhere"), type="track"), dict(ev(user="gone-here"), type="track"),
           dict(ev(user="kept"), type="track")]
    expect(post(p, "/v1/batch", {"batch": sup}), 200, what="batch with suppressed users")
    other = ev(user="gone-here")
    expect(post(p, "/v1/track", other, key="two-key"), 200, what="suppressed on another source")

    # Source rate limit: 10 events per window; 1 used by "kept" above.
    expect(post(p, "/v1/batch", {"batch": [dict(ev(user=f"r{i}"), type="track")
                                           for i in range(9)]}), 200, what="within the limit")
    hdrs = expect(post(p, "/v1/track", ev(user="over")), 429, "rate limit", what="over the limit")
    if not hdrs.get("Retry-After", "").isdigit() or not 0 < int(hdrs["Retry-After"]) <= 60:
        h.fail(f"429 without a sane Retry-After: {hdrs}")
    expect(post(p, "/v1/track", ev(user="src2"), key="two-key"), 200,
           what="another source is not limited by the first one's budget")

    got = events_by_id(env, dev, [sup[2]["messageId"], other["messageId"]])
    ids = {e.get("messageId") for e in got.values()}
    if sup[0]["messageId"] in ids or sup[1]["messageId"] in ids:
        h.fail("a suppressed user's event reached Kafka")
    if sup[2]["messageId"] not in ids or other["messageId"] not in ids:
        h.fail("an event that is not suppressed is missing")
    text = h.http("GET", p.url + "/metrics")[1].decode()
    if 'sluice_gateway_suppressed_events_total{source="src-e2e"} 2' not in text:
        h.fail("suppressed events not counted in /metrics")
    if 'sluice_gateway_rejections_total{reason="rate_limited"} 1' not in text:
        h.fail("rate-limited request not counted in /metrics")

    # Workspace limit: a second gateway with only a workspace-wide budget of 5.
    q = start(env, dev, SLUICE_GATEWAY_WORKSPACE_RATE_LIMIT="5")
    expect(post(q, "/v1/batch", {"batch": [dict(ev(user=f"w{i}"), type="track")
                                           for i in range(3)]}), 200, what="workspace budget")
    expect(post(q, "/v1/batch", {"batch": [dict(ev(user=f"v{i}"), type="track")
                                           for i in range(3)]}, key="two-key"), 429,
           "workspace", what="workspace budget spent by another source")


def case_capacity(env):
    env.write_workspace(config())
    dev = h.DevKafka(env)
    p = start(env, dev, SLUICE_GATEWAY_MAX_INFLIGHT_SIZE="64KB", SLUICE_GATEWAY_ACK_TIMEOUT="8s")
    dev.all_brokers("down")
    # Fill the cap with events Kafka can't take: these wait, then get 503 at the deadline.
    results = []

    def slow():
        body = {"batch": [dict(ev(user=f"c{i}"), type="track", properties={"pad": "z" * 900})
                          for i in range(80)]}
        results.append(post(p, "/v1/batch", body)[0])
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(1.0)
    t0 = time.time()
    st, body, hdrs = post(p, "/v1/track", ev(user="late"))
    took = time.time() - t0
    if st != 503 or "limit" not in error_of(body)["error"] or "Retry-After" not in hdrs:
        h.fail(f"past the in-flight cap: {st} {body!r} {hdrs}")
    if took > 2:
        h.fail(f"the over-capacity answer took {took:.1f}s; it must not wait for Kafka")
    st, _, _ = h.http("GET", p.url + "/health", timeout=5)
    if st == 0:
        h.fail("/health does not answer while the gateway is at its cap")
    t.join(30)
    if results != [503]:
        h.fail(f"the request Kafka could not take got {results}, expected 503")
    dev.all_brokers("up")
    e = ev(user="after")
    h.wait_for("200s again once Kafka is back and the cap is free",
               lambda: post(p, "/v1/track", e)[0] == 200, timeout=40, interval=0.5)
    got = events_by_id(env, dev, [e["messageId"]])
    if e["messageId"] not in got:
        h.fail("the event answered 200 after recovery is not in Kafka")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=["api", "limits", "capacity"])
    a = ap.parse_args()
    fn = {"api": case_api, "limits": case_limits, "capacity": case_capacity}[a.case]
    h.run(fn, "gateway-" + a.case, kafka="embedded")
