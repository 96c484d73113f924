"""A rolling restart under load loses nothing: a gateway, a router and three processors in one
consumer group run as separate processes while senders post events without pause; the
processors are stopped with SIGTERM and started again one by one. Every event that got a 200
must reach the sink exactly once (the processor's output is transactional, so a processor that
leaves mid-batch has its batch redone by the next owner of the partition, never twice).
Real Kafka."""
import threading
import time

import harness as h


def check_rolling(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    gw = env.start("gateway")
    rt = env.start("router")
    procs = [env.start("processor", name=f"processor-{i}") for i in range(3)]
    for p in [gw, rt] + procs:
        env.wait_healthy(p)

    acked, stop = [], threading.Event()

    def send(worker):
        i = 0
        while not stop.is_set():
            mid = f"roll-{worker}-{i}"
            status, _, _ = h.http("POST", gw.url + "/v1/track",
                                  h.track(f"user-{worker}-{i % 7}", messageId=mid),
                                  write_key="e2e-write-key", timeout=15)
            if status == 200:
                acked.append(mid)
            i += 1

    senders = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in senders:
        t.start()
    h.wait_for("some acknowledged events", lambda: len(acked) >= 200, timeout=60)
    for i in range(len(procs)):
        before = len(acked)
        rc = procs[i].stop(timeout=60)
        assert rc == 0, f"processor-{i} exited with {rc} on SIGTERM:\n{procs[i].output()[-3000:]}"
        procs[i] = env.start("processor", name=f"processor-{i}-restarted")
        env.wait_healthy(procs[i])
        h.wait_for("events acknowledged after the restart",
                   lambda: len(acked) >= before + 100, timeout=60)
        h.log(f"processor-{i} restarted; {len(acked)} acknowledged, "
              f"{len(sink.message_ids())} delivered")
    time.sleep(1)
    stop.set()
    for t in senders:
        t.join()

    want = set(acked)
    h.wait_for("every acknowledged event at the sink",
               lambda: want <= set(sink.message_ids()), timeout=120, interval=0.5)
    time.sleep(1)  # let a duplicate, if any, arrive
    ids = sink.message_ids()
    dups = len(ids) - len(set(ids))
    h.log(f"acknowledged {len(want)}, delivered {len(set(ids))}, duplicates {dups}")
    assert dups == 0, f"{dups} events delivered twice"
    for p in [gw, rt] + procs:
        assert p.stop() == 0, f"{p.name} did not stop cleanly:\n{p.output()[-3000:]}"


if __name__ == "__main__":
    h.run(check_rolling, "rolling", kafka="real")
