#!/usr/bin/env python3
"""The sampler of tests/bench/longrun: every SECONDS until WORK/stop exists, one JSON line in
WORK/samples.jsonl with, for each role (pids in WORK/pids/<role>; the router's changes when it
is restarted) and each js-worker child of the processor, VmRSS and VmHWM (kB) and CPU over the
interval (% of one core); sink A's and B's event counts; the router's sluice_router_parked and
sluice_router_parked_oldest_seconds for d-b; the broker's and Postgres' RSS; the load average
and WORK/phase.

    longrun_sample.py WORK SECONDS BROKER_PID PORT_A PORT_B ROUTER_PORT PG_DATA
"""
import json
import os
import re
import sys
import time
import urllib.request

TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """(utime + stime ticks, ppid) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), int(fields[1])


def memory(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out[name.lower()] = int(value.split()[0])
    except OSError:
        pass
    return out


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(d)
            if st and st[1] == pid:
                kids.append(int(d))
    return kids


def fetch(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except Exception:
        return None


def gauge(text, name):
    if not text:
        return None
    m = re.search(r"^%s\{[^}]*\"d-b\"[^}]*\} (\S+)$" % name, text, re.M)
    return float(m.group(1)) if m else 0.0


def main():
    work, every, broker = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    port_a, port_b, rt_port, pg_data = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
    prev = {}  # pid -> (ticks, time)
    t0 = time.time()
    n = 0
    with open(os.path.join(work, "samples.jsonl"), "a") as out:
        while True:
            now = time.time()
            pids = {}
            for role in ("gateway", "processor", "router"):
                try:
                    with open(os.path.join(work, "pids", role)) as f:
                        pids[role] = int(f.read())
                except (OSError, ValueError):
                    pass
            try:
                with open(os.path.join(pg_data, "postmaster.pid")) as f:
                    pids["postgres"] = int(f.readline())
            except (OSError, ValueError):
                pass  # its RSS is the postmaster's only: the backends share its buffers
            pids["kafka"] = broker

            def measure(pid):
                st = proc_stat(pid)
                r = dict(pid=pid, **memory(pid))
                if st:
                    last = prev.get(pid)
                    if last and now > last[1]:
                        r["cpu_pct"] = round((st[0] - last[0]) / TCK / (now - last[1]) * 100, 1)
                    prev[pid] = (st[0], now)
                return r

            roles = {k: measure(p) for k, p in pids.items()}
            workers = [measure(k) for k in children(pids["processor"])] if "processor" in pids else []
            stats = {}
            for name, port in (("a", port_a), ("b", port_b)):
                body = fetch(f"http://127.0.0.1:{port}/_sink/stats")
                stats[name] = json.loads(body)["events"] if body else None
            metrics = fetch(f"http://127.0.0.1:{rt_port}/metrics")
            try:
                with open(os.path.join(work, "phase")) as f:
                    phase = f.read().strip()
            except OSError:
                phase = "?"
            with open("/proc/loadavg") as f:
                load1 = float(f.read().split()[0])
            s = {"t": round(now, 3), "phase": phase, "roles": roles, "workers": workers,
                 "a_events": stats["a"], "b_events": stats["b"],
                 "parked": gauge(metrics, "sluice_router_parked"),
                 "parked_oldest_s": gauge(metrics, "sluice_router_parked_oldest_seconds"),
                 "load1": load1}
            out.write(json.dumps(s) + "\n")
            out.flush()
            if os.path.exists(os.path.join(work, "stop")):
                return
            n += 1
            # on a fixed grid, also after a slow sample; checks for the stop file every second
            while time.time() < t0 + n * every:
                if os.path.exists(os.path.join(work, "stop")):
                    break
                time.sleep(min(1.0, max(0.0, t0 + n * every - time.time())))


if __name__ == "__main__":
    main()
