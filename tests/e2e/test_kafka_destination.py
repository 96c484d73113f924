"""The KAFKA destination end to end: events sent to the gateway reach a topic on a real Kafka
cluster through the processor (KAFKA definition) and the router (router/kafka_dest.c), keyed by
user, in order per user, beside a WEBHOOK destination of the same source; a KAFKA destination
with a config the router can't use aborts its jobs into the dead letters, with the reason, and
`sluice status` shows both journeys.
"""
import json
import subprocess

import harness as h


def kafka_dest(dest_id, brokers, topic, **extra):
    host, port = brokers.split(",")[0].rsplit(":", 1)
    cfg = {"hostname": host, "port": port, "topic": topic}
    cfg.update(extra)
    return {
        "id": dest_id, "name": dest_id, "enabled": True, "config": cfg,
        "destinationDefinition": {"name": "KAFKA", "displayName": "Apache Kafka"},
    }


def case(env):
    sink = h.Sink(env)
    topic = env.prefix + "kafka-dest"
    cfg = h.workspace_config(sink.url)
    dests = cfg["sources"][0]["destinations"]
    dests.append(kafka_dest("dst-kafka", env.brokers, topic))
    # SASL without credentials: the router can't build a producer, so every job aborts.
    dests.append(kafka_dest("dst-kafka-bad", env.brokers, topic + "-bad", useSASL=True,
                            saslType="plain"))
    env.write_workspace(cfg)
    p = env.start("all")
    env.wait_healthy(p)

    sent = []
    for i in range(30):
        user = f"k-user-{i % 3}"
        mid = f"k-{i}"
        st, body, _ = h.http("POST", p.url + "/v1/track",
                             {"userId": user, "event": "Ordered", "messageId": mid,
                              "properties": {"seq": i}}, write_key="e2e-write-key")
        assert st == 200, (st, body)
        sent.append((user, mid))

    def arrived():
        try:
            msgs = h.kafka_messages(env.brokers, topic, timeout=60)
        except AssertionError:  # the topic is created by the first message
            return None
        return msgs if len(msgs) >= len(sent) else None
    msgs = h.wait_for("30 events in the KAFKA destination's topic", arrived, timeout=60,
                      interval=1)
    assert len(msgs) == len(sent), f"{len(msgs)} messages for {len(sent)} events"
    by_user = {}
    for m in msgs:
        ev = json.loads(m["value"])
        assert ev["type"] == "track" and ev["event"] == "Ordered", ev
        assert m["key"], m  # keyed by the user key (the rudderId)
        by_user.setdefault(ev["userId"], []).append((m["partition"], m["offset"], ev))
    for user, got in by_user.items():
        parts = {g[0] for g in got}
        assert len(parts) == 1, f"{user}'s events are in partitions {parts}"
        seqs = [g[2]["properties"]["seq"] for g in sorted(got, key=lambda g: g[1])]
        assert seqs == sorted(seqs), f"{user}'s events out of order: {seqs}"
    h.wait_for("the webhook copies", lambda: len(sink.events()) >= len(sent), timeout=30)

    # The bad KAFKA destination: aborted at once, each job a dead letter with the reason.
    def dead():
        out = h.psql(env.dsn, "SELECT count(*) FROM sluice_failed_events WHERE "
                     "destination_id = 'dst-kafka-bad' AND stage = 'router'")
        return int(out[0][0]) >= len(sent)
    h.wait_for("the bad KAFKA destination's dead letters", dead, timeout=60, interval=0.5)
    reason = h.psql(env.dsn, "SELECT reason FROM sluice_failed_events WHERE "
                    "destination_id = 'dst-kafka-bad' LIMIT 1")[0][0]
    assert "username" in reason or "SASL" in reason or "sasl" in reason, reason

    out = subprocess.run([h.SLUICE, "status", "k-0", "--json"], env=p.env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    journey = json.loads(out.stdout)
    states = {d["destinationId"]: [s.get("state") or s.get("kind") for s in d["steps"]]
              for d in journey["destinations"]}
    assert "succeeded" in states.get("dst-kafka", []), states
    assert "succeeded" in states.get("dst-webhook", []), states
    assert "aborted" in states.get("dst-kafka-bad", []), states
    p.stop()


if __name__ == "__main__":
    h.run(case, "kafka-destination")
