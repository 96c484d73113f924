#!/usr/bin/env python3
"""Writes synthetic Segment track events for the gateway benchmark (tests/bench/run).

    gen_events.py --count N [--seed S] [--users U] [--events FILE] [--track FILE]
                  [--batch FILE] [--batch-size 100] [--kcat FILE] [--stamp]

Events are about 500 bytes of compact JSON: userId or anonymousId drawn from ~U users (10,000),
an event name, a few properties, context with library/page/userAgent, a timestamp and a
messageId. Outputs, each one record per line:
  --events  one event per line (input of sluice-parse-ceiling)
  --track   request bodies for /v1/track: one event each (the same lines as --events)
  --batch   request bodies for /v1/batch: {"batch":[...]} of --batch-size events each
  --kcat    "key<TAB>event" for `kcat -P -K '\\t'`, keyed by the user like the gateway does
--stamp gives every event the messageId STAMP, which `sluice-loadgen --stamp` replaces in each
request with a sequence number and the send time (the end-to-end benchmark, tests/bench/e2e).
Python 3 standard library only; the same seed gives the same files.
"""
import argparse
import json
import random
import uuid
from datetime import datetime, timedelta, timezone

EVENTS = [
    ("Product Viewed", "/products/{sku}"),
    ("Product Added", "/products/{sku}"),
    ("Checkout Started", "/checkout"),
    ("Order Completed", "/checkout/complete"),
    ("Signed Up", "/signup"),
    ("Article Read", "/blog/{slug}"),
    ("Search Performed", "/search"),
    ("Video Played", "/watch/{slug}"),
]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
]
CATEGORIES = ["shoes", "outerwear", "accessories", "kitchen", "garden", "books", "toys"]
SLUGS = ["kafka-at-scale", "event-pipelines", "ordering-guarantees", "why-c", "cdp-101"]
TARGET = 500
STAMP = "e2e-SSSSSSSSSSSS-TTTTTTTTTTTTTTTTTTT"  # loadgen.c STAMP_PLACEHOLDER, as long as a UUID


def make_event(rng, users, base, i, stamp=False):
    u = rng.randrange(users)
    name, path = rng.choice(EVENTS)
    sku = "SKU-%06d" % rng.randrange(1000000)
    page_path = path.format(sku=sku, slug=rng.choice(SLUGS))
    ev = {"type": "track", "event": name}
    if rng.random() < 0.8:
        ev["userId"] = "user-%05d" % u
    else:
        ev["anonymousId"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    ev["properties"] = {
        "sku": sku,
        "category": rng.choice(CATEGORIES),
        "price": round(rng.uniform(3, 300), 2),
        "quantity": rng.randrange(1, 5),
        "currency": "USD",
    }
    ev["context"] = {
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "page": {"path": page_path, "url": "https://shop.example.com" + page_path},
        "userAgent": rng.choice(AGENTS),
    }
    ts = base + timedelta(milliseconds=i * 37 + rng.randrange(1000))
    ev["timestamp"] = ts.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ts.microsecond // 1000)
    ev["messageId"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if stamp:
        ev["messageId"] = STAMP
    text = json.dumps(ev, separators=(",", ":"))
    # Pad or trim a free-text property so the event lands at about TARGET bytes (+-10%).
    want = TARGET + rng.randrange(-50, 51)
    pad = want - len(text) - len(',"note":""')
    if pad > 0:
        ev["properties"]["note"] = ("lorem ipsum dolor sit amet " * 40)[:pad]
        text = json.dumps(ev, separators=(",", ":"))
    return ev, text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, required=True, help="number of events")
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events")
    ap.add_argument("--track")
    ap.add_argument("--batch")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--kcat")
    ap.add_argument("--stamp", action="store_true")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    base = datetime(2024, 5, 1, tzinfo=timezone.utc)
    files = {k: open(v, "w") for k, v in
             (("events", a.events), ("track", a.track), ("batch", a.batch), ("kcat", a.kcat)) if v}
    batch = []
    total = 0
    for i in range(a.count):
        ev, text = make_event(rng, a.users, base, i, a.stamp)
        total += len(text)
        for k in ("events", "track"):
            if k in files:
                files[k].write(text + "\n")
        if "kcat" in files:
            files["kcat"].write("%s\t%s\n" % (ev.get("userId") or ev["anonymousId"], text))
        if "batch" in files:
            batch.append(text)
            if len(batch) == a.batch_size:
                files["batch"].write('{"batch":[' + ",".join(batch) + "]}\n")
                batch = []
    for f in files.values():
        f.close()
    print(json.dumps({"events": a.count, "avg_event_bytes": round(total / max(a.count, 1))}))


if __name__ == "__main__":
    main()
