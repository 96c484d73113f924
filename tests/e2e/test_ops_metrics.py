"""Each role's /metrics after events flowed through separate gateway, processor and router
processes on the real Kafka: throughput, errors by reason and latency histograms, labelled
by source and destination ids from the workspace config; and every sluice_* metric that the
Grafana dashboard (compose/grafana/dashboards/sluice.json) queries is one a role serves.
"""
import json
import os
import re

import harness as h

DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "compose",
                         "grafana", "dashboards", "sluice.json")
# Dashboard series that a role serves only in some states: the parked-jobs gauges while jobs
# wait for a retry, and the warehouse role's, which this test does not run.
STATEFUL = re.compile(r"^sluice_(router_parked|warehouse_)")


def webhook(dest_id, url, enabled=True):
    return {"id": dest_id, "name": dest_id, "enabled": enabled,
            "config": {"webhookUrl": url, "webhookMethod": "POST"},
            "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook",
                                      "config": {"supportedMessageTypes": ["track"]}}}


def source(src_id, key, dests):
    return {"id": src_id, "name": src_id, "writeKey": key, "enabled": True,
            "sourceDefinition": {"name": "HTTP", "category": "eventStream"},
            "destinations": dests}


def metrics(p):
    status, body, _ = h.http("GET", p.url + "/metrics")
    if status != 200:
        h.fail(f"{p.name} /metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def check(env):
    ok, flaky, bad = h.Sink(env), h.Sink(env), h.Sink(env)
    flaky.set_mode(status=503, count=1)  # one retry, then delivered
    bad.set_mode(status=400)             # aborted at once
    hubspot = {"id": "d-hs", "name": "hs", "enabled": True, "config": {},
               "destinationDefinition": {"name": "HS", "displayName": "HubSpot", "config": {}}}
    env.write_workspace({"workspaceId": "ws-metrics", "sources": [
        source("src-a", "key-a", [webhook("d-ok", ok.url + "/a"), webhook("d-flaky", flaky.url),
                                  webhook("d-bad", bad.url), webhook("d-off", ok.url, False),
                                  hubspot]),
        source("src-b", "key-b", [webhook("d-ok-b", ok.url + "/b")])]})
    h.create_topics(env)
    gw = env.start("gateway")
    pr = env.start("processor")
    rt = env.start("router")
    for p in (gw, pr, rt):
        env.wait_healthy(p)

    for i in range(5):
        for key in ("key-a", "key-b"):
            st, body, _ = h.http("POST", gw.url + "/v1/track",
                                 {"userId": f"u{i}", "event": "Metered"}, write_key=key)
            if st != 200:
                h.fail(f"POST /v1/track with {key}: {st} {body!r}")
    if h.http("POST", gw.url + "/v1/track", {"userId": "u", "event": "x"},
              write_key="nope")[0] != 401:
        h.fail("an unknown writeKey was not refused")

    def settled():
        m = metrics(rt)
        return m if (m.get('sluice_router_delivered_total{destination="d-ok"}') == 5 and
                     m.get('sluice_router_delivered_total{destination="d-ok-b"}') == 5 and
                     m.get('sluice_router_delivered_total{destination="d-flaky"}') == 5 and
                     m.get('sluice_router_aborted_total{destination="d-bad",reason="http_4xx"}')
                     == 5) else None
    router = h.wait_for("the router's counters", settled, timeout=15, interval=0.2)
    gateway, processor = metrics(gw), metrics(pr)

    want = {
        gw: [('sluice_gateway_events_total{source="src-a",endpoint="track"}', 5),
             ('sluice_gateway_events_total{source="src-b",endpoint="track"}', 5),
             ('sluice_gateway_requests_total{source="src-a",endpoint="track",status="200"}', 5),
             ('sluice_gateway_rejections_total{reason="invalid_write_key"}', 1),
             ('sluice_gateway_request_seconds_count{endpoint="track"}', 11),
             ('sluice_gateway_request_seconds_bucket{endpoint="track",le="+Inf"}', 11)],
        pr: [('sluice_processor_events_total{source="src-a"}', 5),
             ('sluice_processor_events_total{source="src-b"}', 5),
             ('sluice_processor_jobs_total{source="src-a",destination="d-ok"}', 5),
             ('sluice_processor_jobs_total{source="src-b",destination="d-ok-b"}', 5),
             ('sluice_processor_filtered_total{source="src-a",destination="d-off"}', 5),
             ('sluice_processor_failed_total{source="src-a",destination="d-hs",'
              'stage="destination_transformation"}', 5),
             ('sluice_processor_latency_seconds_count{source="src-b",destination="d-ok-b"}', 5),
             ('sluice_processor_latency_seconds_bucket{source="src-a",destination="d-ok",'
              'le="+Inf"}', 5)],
        rt: [('sluice_router_retried_total{destination="d-flaky",reason="http_5xx"}', 1),
             ('sluice_router_delivery_seconds_count{destination="d-bad"}', 5),
             ('sluice_router_latency_seconds_count{destination="d-ok"}', 5),
             ('sluice_router_latency_seconds_bucket{destination="d-flaky",le="+Inf"}', 5)],
    }
    got = {gw: gateway, pr: processor, rt: router}
    for p, series in want.items():
        for name, value in series:
            if got[p].get(name) != value:
                near = [s for s in got[p] if s.startswith(name.split("{")[0])]
                h.fail(f"{p.name}: {name} is {got[p].get(name)}, want {value}; has {near}")
    # Histograms are cumulative and their _sum is the total of the observations.
    for p, m in got.items():
        for s, v in m.items():
            if s.endswith("_sum") and v < 0:
                h.fail(f"{p.name}: {s} is {v}")
    p99 = [s for s in router if s.startswith("sluice_router_latency_seconds_bucket")
           and 'destination="d-ok"' in s]
    if len(p99) < 10:
        h.fail(f"sluice_router_latency_seconds has {len(p99)} buckets for d-ok")
    h.log(f"{len(gateway)} gateway, {len(processor)} processor, {len(router)} router series")

    # The dashboard queries only metrics the roles serve.
    with open(DASHBOARD) as f:
        exprs = [t["expr"] for p in json.load(f)["panels"] for t in p.get("targets", [])]
    served = {re.sub(r"(_bucket|_sum|_count)$", "", s.split("{")[0])
              for m in got.values() for s in m}
    queried = {n for e in exprs for n in re.findall(r"\bsluice_\w+", e)}
    queried = {re.sub(r"_bucket$", "", n) for n in queried}
    missing = sorted(n for n in queried - served if not STATEFUL.match(n))
    if missing:
        h.fail(f"the dashboard queries metrics no role serves: {missing}")
    h.log(f"the dashboard's {len(queried)} sluice metrics: all served "
          f"({len(queried - served)} only in some states)")


if __name__ == "__main__":
    h.run(check, "ops-metrics", kafka="real")
