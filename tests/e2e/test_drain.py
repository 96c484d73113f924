"""SIGTERM to `sluice all` drains: events in flight are delivered or stay in Kafka and are
delivered after a restart. Every event that got a 200 must reach the sink; duplicates are
counted and reported. Runs against the real Kafka (the embedded broker keeps events in memory
only, so a restart loses them by design)."""
import threading
import time

import harness as h


def check_drain(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("all")
    env.wait_healthy(p)

    acked, stop = [], threading.Event()

    def send(worker):
        i = 0
        while not stop.is_set():
            mid = f"drain-{worker}-{i}"
            status, _, _ = h.http("POST", p.url + "/v1/track",
                                  h.track(f"user-{worker}-{i % 5}", messageId=mid),
                                  write_key="e2e-write-key", timeout=15)
            if status == 200:
                acked.append(mid)
            elif status == 0:
                time.sleep(0.01)  # the gateway has stopped listening
            i += 1

    senders = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in senders:
        t.start()
    h.wait_for("some acknowledged events", lambda: len(acked) >= 300, timeout=60)
    # Slow the sink so that deliveries are in flight when SIGTERM arrives.
    sink.set_mode(status=200, delay_ms=50)
    time.sleep(0.5)
    h.log(f"SIGTERM with {len(acked)} acknowledged, {len(sink.message_ids())} delivered")
    rc = p.stop(timeout=90)
    stop.set()
    for t in senders:
        t.join()
    assert rc == 0, f"sluice all exited with {rc}:\n{p.output()[-3000:]}"
    delivered_before = len(set(sink.message_ids()))
    h.log(f"stopped: {len(acked)} acknowledged, {delivered_before} delivered before restart")
    sink.set_mode(status=200, delay_ms=0)

    p2 = env.start("all", name="all-restarted", **{k: v for k, v in p.env.items()
                                                   if k.startswith("SLUICE_")})
    env.wait_healthy(p2)
    want = set(acked)
    h.wait_for("every acknowledged event at the sink after restart",
               lambda: want <= set(sink.message_ids()), timeout=120, interval=0.5)
    ids = sink.message_ids()
    dups = len(ids) - len(set(ids))
    lost = want - set(ids)
    h.log(f"acknowledged {len(want)}, lost {len(lost)}, duplicates {dups} "
          f"({100.0 * dups / max(1, len(ids)):.2f}%)")
    assert not lost
    assert p2.stop() == 0


if __name__ == "__main__":
    h.run(check_drain, "drain", kafka="real")
