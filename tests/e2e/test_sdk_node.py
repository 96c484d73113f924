"""A real SDK against the gateway: RudderStack's Node.js SDK (@rudderstack/rudder-sdk-node from
the npm registry, the exact version pinned in tests/e2e/sdk_node/package.json and
package-lock.json) sends track, identify, page, screen, group and alias calls to
`sluice gateway` on the real Kafka, gzip-compressed and plain, in several /v1/batch requests.
Then the events topic is read back with kcat and every call must be there exactly once with
its messageId (explicit or SDK-generated), type and fields as the SDK sent them, plus the
fields the gateway adds (receivedAt, rudderId, request_ip, context.ip), keyed by rudderId.

The SDK is installed with `npm ci` into ~/.cache/sluice/npm/<hash of the lock file> (outside
the tree, reused across runs); that needs the npm registry the first time, and the test fails
with a message saying so when it is unreachable.

Usage: test_sdk_node.py
"""
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid

import harness as h

SDK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk_node")
WRITE_KEY = "e2e-write-key"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Fields the gateway owns; everything else must reach Kafka exactly as the SDK sent it.
GATEWAY_FIELDS = ("receivedAt", "rudderId", "request_ip")


def install_sdk():
    """npm ci of tests/e2e/sdk_node into the cache; returns its node_modules directory."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            h.fail(f"`{tool}` is not installed: run scripts/test (scripts/lib/deps.sh installs "
                   "Debian's nodejs and npm) or install Node.js >= 16 with npm")
    with open(os.path.join(SDK_DIR, "package-lock.json"), "rb") as f:
        lock = f.read()
    with open(os.path.join(SDK_DIR, "package.json"), "rb") as f:
        digest = hashlib.sha256(lock + b"\0" + f.read()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                         "sluice", "npm")
    dest = os.path.join(cache, digest)
    if os.path.exists(os.path.join(dest, ".complete")):
        return os.path.join(dest, "node_modules")
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(SDK_DIR, name), tmp)
    h.log(f"installing the Node.js SDK with npm ci into {dest}")
    try:
        r = subprocess.run(["npm", "ci", "--prefix", tmp, "--ignore-scripts", "--no-audit",
                            "--no-fund", "--cache", os.path.join(cache, "_cacache")],
                           capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        r = None
    if r is None or r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = "timed out after 240 s" if r is None else (r.stderr or r.stdout).strip()[-1500:]
        h.fail("could not install @rudderstack/rudder-sdk-node with `npm ci` (this test needs "
               f"the npm registry, {npm_registry()}, reachable the first time; the install is "
               f"cached in {cache}): {detail}")
    with open(os.path.join(tmp, ".complete"), "w"):
        pass
    shutil.rmtree(dest, ignore_errors=True)
    try:
        os.rename(tmp, dest)
    except OSError:  # a concurrent run got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(dest, "node_modules")


def npm_registry():
    try:
        return subprocess.run(["npm", "config", "get", "registry"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "https://registry.npmjs.org/"


def plan_calls(run):
    """The calls the SDK makes: (client, method, message). Every message carries
    context.e2e.call = its index so the test can find it in Kafka."""
    calls = [
        ("gz", "track", {
            "userId": "sdk-user-1", "event": "Order Completed",
            "messageId": f"sdk-{run}-explicit-track",
            "timestamp": "2024-05-06T07:08:09.123Z",
            "properties": {"revenue": 42.5, "currency": "EUR", "count": 3, "paid": True,
                           "coupon": None, "big": 9007199254740991, "ratio": 0.1,
                           "greeting": "Gr\u00fc\u00dfe \u2713 \u65e5\u672c \"quoted\" a/b\\c",
                           "products": [{"sku": "A-1", "qty": 2, "tags": ["x", "y"]},
                                        {"sku": "B-2", "qty": 1, "tags": []}],
                           "nested": {"deep": {"deeper": {"ok": True}}}},
            "context": {"app": {"name": "shop", "version": "1.2.3"}, "locale": "de-DE",
                        "campaign": {"name": "spring", "source": "newsletter"}},
            "integrations": {"All": True, "Amplitude": False, "Webhook": {"tag": "x"}},
        }),
        ("gz", "track", {
            "anonymousId": f"anon-{run}-1", "event": "Product Viewed",
            "properties": {"sku": "A-1", "price": 19.99},
        }),
        ("gz", "identify", {
            "userId": "sdk-user-1", "messageId": f"sdk-{run}-explicit-identify",
            "traits": {"email": "ada@example.com", "name": "Ada", "plan": "pro",
                       "address": {"city": "Berlin", "country": "DE"}, "logins": 7},
            "context": {"timezone": "Europe/Berlin"},
        }),
        ("plain", "identify", {
            "anonymousId": f"anon-{run}-2", "traits": {"newsletter": False},
        }),
        ("gz", "page", {
            "userId": "sdk-user-2", "name": "Pricing", "category": "Docs",
            "properties": {"url": "https://example.com/pricing?x=1", "path": "/pricing",
                           "referrer": "https://search.example/"},
            "integrations": {"All": False, "Webhook": True},
        }),
        ("plain", "page", {
            "userId": "sdk-user-2", "anonymousId": f"anon-{run}-3", "name": "Home",
            "properties": {"path": "/"},
        }),
        ("gz", "screen", {
            "userId": "sdk-user-3", "name": "Dashboard", "properties": {"tab": "sales"},
        }),
        ("plain", "screen", {
            "anonymousId": f"anon-{run}-4", "name": "Settings",
            "messageId": f"sdk-{run}-explicit-screen",
            "context": {"device": {"type": "ios", "model": "iPhone15,2"},
                        "os": {"name": "iOS", "version": "17.4"}},
        }),
        ("gz", "group", {
            "userId": "sdk-user-1", "groupId": "acme-inc",
            "traits": {"name": "Acme Inc", "employees": 120, "industry": "Anvils"},
        }),
        ("plain", "group", {
            "anonymousId": f"anon-{run}-5", "groupId": 4711, "traits": {"name": "Numbers"},
        }),
        ("gz", "alias", {
            "userId": "sdk-user-1", "previousId": f"anon-{run}-1",
            "messageId": f"sdk-{run}-explicit-alias",
        }),
        ("plain", "alias", {
            "userId": "sdk-user-4", "previousId": "old-user-4",
            "context": {"ip": "203.0.113.7"},  # a client-supplied ip is kept
        }),
    ]
    # More tracks, so that the gz client sends several batches with two users' events each.
    for i in range(12):
        calls.append(("gz", "track", {"userId": f"sdk-seq-{i % 2}", "event": "Clicked",
                                      "properties": {"seq": i}}))
    out = []
    for i, (client, method, msg) in enumerate(calls):
        msg = json.loads(json.dumps(msg))
        msg.setdefault("context", {})["e2e"] = {"call": i, "run": run}
        out.append({"client": client, "method": method, "message": msg})
    return out


def expected_rudder_id(ev):
    """rudderId as the gateway derives it: a name-based UUID of md5(userId + anonymousId)."""
    def text(v):
        if v is None or v == "":
            return ""
        return v if isinstance(v, str) else json.dumps(v)
    key = text(ev.get("userId")) + text(ev.get("anonymousId"))
    return str(uuid.UUID(bytes=hashlib.md5(key.encode()).digest(), version=3))


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def check_sdk(env):
    node_modules = install_sdk()
    env.write_workspace(h.workspace_config("http://127.0.0.1:9"))
    p = env.start("gateway")
    env.wait_healthy(p)

    run = uuid.uuid4().hex[:8]
    calls = plan_calls(run)
    bad_mid = f"sdk-{run}-bad-key"
    plan = {
        "dataPlaneUrl": p.url,
        "clients": {
            "gz": {"writeKey": WRITE_KEY, "flushAt": 4, "flushInterval": 600000},
            "plain": {"writeKey": WRITE_KEY, "flushAt": 3, "flushInterval": 600000,
                      "gzip": False},
            "bad": {"writeKey": "not-a-write-key", "flushAt": 1, "flushInterval": 600000,
                    "retryCount": 0},
        },
        "calls": calls + [{"client": "bad", "method": "track", "message": {
            "userId": "sdk-user-1", "event": "Rejected", "messageId": bad_mid}}],
    }
    plan_path = os.path.join(env.workdir, "plan.json")
    report_path = os.path.join(env.workdir, "report.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    t0 = time.time()
    nenv = env.base_env()
    nenv["NODE_PATH"] = node_modules
    r = subprocess.run(["node", os.path.join(SDK_DIR, "send.js"), plan_path, report_path],
                       env=nenv, capture_output=True, text=True, timeout=120)
    t1 = time.time()
    if r.returncode != 0 or not os.path.exists(report_path):
        h.fail(f"the SDK script failed ({r.returncode}): {r.stderr[-3000:]}")
    with open(report_path) as f:
        report = json.load(f)
    h.log(f"SDK: {len(calls) + 1} calls in {len(report['requests'])} requests, "
          f"{t1 - t0:.1f}s; statuses {[q['status'] for q in report['requests']]}")
    if r.stderr.strip():
        h.log(f"SDK stderr: {r.stderr.strip()[-1500:]}")

    # The SDK's verdicts: every call acknowledged, except the one with a bad writeKey.
    verdicts = {c["index"]: c["error"] for c in report["calls"]}
    failed = {i: e for i, e in verdicts.items() if e and i < len(calls)}
    assert not failed, f"SDK calls that failed: {failed}"
    assert len(verdicts) == len(calls) + 1, verdicts
    assert verdicts[len(calls)], "the call with a bad writeKey was not reported as failed"

    # The requests on the wire: /v1/batch, Basic auth, gzip for one client, plain for the other.
    wire = {}
    for q in report["requests"]:
        assert q["url"].endswith("/v1/batch"), q["url"]
        if q["client"] == "bad":
            assert q["status"] == 401, q
            continue
        assert q["status"] == 200, q
        assert q["contentEncoding"] == ("gzip" if q["client"] == "gz" else None), q
        assert (q["auth"] or {}).get("username") == WRITE_KEY, q["auth"]
        for m in q["body"]["batch"]:
            i = m["context"]["e2e"]["call"]
            assert i not in wire, f"call {i} was sent twice"
            wire[i] = m
    assert sorted(wire) == list(range(len(calls))), sorted(wire)
    n_gz = sum(1 for q in report["requests"] if q["client"] == "gz")
    n_plain = sum(1 for q in report["requests"] if q["client"] == "plain")
    assert n_gz >= 3 and n_plain >= 2, (n_gz, n_plain)

    # Kafka holds every call exactly once, as the SDK sent it plus the gateway's fields.
    topic = env.prefix + "events"
    events = h.kafka_events(env.brokers, topic)
    by_call, pos = {}, {}
    for ev in events:
        i = ((ev.get("context") or {}).get("e2e") or {}).get("call")
        assert ev.get("messageId") != bad_mid, "an event with a rejected writeKey is in Kafka"
        assert i is not None, f"unexpected event in {topic}: {ev}"
        by_call.setdefault(i, []).append(ev)
        pos[i] = (ev["_kafka"]["partition"], ev["_kafka"]["offset"])
    missing = [i for i in range(len(calls)) if i not in by_call]
    assert not missing, f"calls missing from Kafka: {[(i, calls[i]) for i in missing]}"
    dups = {i: len(v) for i, v in by_call.items() if len(v) != 1}
    assert not dups, f"calls in Kafka more than once: {dups}"
    assert len(events) == len(calls), (len(events), len(calls))

    for i, call in enumerate(calls):
        ev = by_call[i][0]
        sent = wire[i]
        msg = call["message"]
        kafka = ev.pop("_kafka")
        where = f"call {i} ({call['method']})"
        # messageId: the caller's, or the SDK's own (a UUID), kept by the gateway.
        if "messageId" in msg:
            assert ev["messageId"] == msg["messageId"], (where, ev["messageId"])
        else:
            assert UUID_RE.match(ev["messageId"]) and ev["messageId"] == sent["messageId"], \
                (where, ev["messageId"], sent["messageId"])
        assert ev["type"] == call["method"], (where, ev["type"])
        # The gateway's fields.
        assert t0 - 5 <= parse_time(ev["receivedAt"]) <= t1 + 5, (where, ev["receivedAt"])
        assert ev["request_ip"] == "127.0.0.1", (where, ev["request_ip"])
        assert ev["rudderId"] == expected_rudder_id(msg), (where, ev["rudderId"])
        assert kafka["key"] == ev["rudderId"], (where, kafka["key"], ev["rudderId"])
        assert kafka["headers"].get("sluice-source-id") == "src-e2e", (where, kafka["headers"])
        want_ip = msg.get("context", {}).get("ip", "127.0.0.1")
        assert ev["context"]["ip"] == want_ip, (where, ev["context"])
        # Everything the caller passed is intact.
        for k, v in msg.items():
            if k == "context":
                for ck, cv in v.items():
                    assert ev["context"].get(ck) == cv, (where, ck, ev["context"].get(ck), cv)
            else:
                assert ev.get(k) == v, (where, k, ev.get(k), v)
        # And the event is exactly what the SDK sent, apart from the gateway's fields.
        rest = {k: v for k, v in ev.items() if k not in GATEWAY_FIELDS}
        rest["context"] = dict(ev["context"])
        if "ip" not in sent.get("context", {}):
            rest["context"].pop("ip", None)
        if rest != sent:
            diff = sorted(k for k in set(rest) | set(sent) if rest.get(k) != sent.get(k))
            h.fail(f"{where}: Kafka's event differs from what the SDK sent in {diff}:\n"
                   f"  sent:  {json.dumps(sent, sort_keys=True)}\n"
                   f"  kafka: {json.dumps(rest, sort_keys=True)}")
        # What the SDK adds survived too.
        assert ev["context"]["library"]["name"] == "analytics-node", (where, ev["context"])
        assert ev["channel"] == "server" and ev["originalTimestamp"] and ev["sentAt"], where
        if call["method"] == "identify":
            assert ev["context"]["traits"] == msg["traits"], (where, ev["context"])

    # Within one request, one user's events keep their order in the user's partition. (Across
    # requests there is no order to keep: the SDK sends the batches it queued concurrently.)
    pairs = 0
    for q in report["requests"]:
        if q["client"] == "bad":
            continue
        seen = {}
        for m in q["body"]["batch"]:
            i = m["context"]["e2e"]["call"]
            seen.setdefault(by_call[i][0]["rudderId"], []).append(pos[i])
        for rid, offsets in seen.items():
            assert len({p for p, _ in offsets}) == 1, (rid, offsets)
            assert [o for _, o in offsets] == sorted(o for _, o in offsets), (rid, offsets)
            pairs += len(offsets) - 1
    assert pairs >= 4, pairs
    h.log(f"all {len(calls)} SDK calls are in {topic} intact; the bad writeKey's is not")
    assert p.stop() == 0, p.output()[-3000:]


def main():
    h.run(check_sdk, "sdk-node", kafka="real")


if __name__ == "__main__":
    main()
