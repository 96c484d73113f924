#!/usr/bin/env python3
"""The end-to-end benchmark's measurements (tests/bench/e2e runs them; see tests/bench/README.md).

    e2e_measure.py scenario --spec FILE --out FILE
    e2e_measure.py idle --pids JSON --seconds S --out FILE
    e2e_measure.py report --work DIR

scenario: runs the spec's load (sluice-loadgen --stamp, and for a warehouse scenario the
latency probe beside it) while sampling every process in `pids` (CPU ticks, VmRSS, VmHWM) every
0.5 s, then waits until every event the gateway acknowledged has arrived, nothing arrived for
`quiet` seconds, or `limit` seconds passed since the load ended. Arrived: at the sink, the
lines "messageId arrival" of its --record --arrival file; in the warehouse, the ids (messageIds)
of the stamped rows in the table. Each stamped messageId names its event's number and send
time; the load generator's --unacked file names the ones not acknowledged (all others were).
idle: CPU of each process over S seconds. report: the table, from DIR's JSON files.
Python 3 standard library only.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

TCK = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    """utime+stime of a process, plus its reaped children's for Postgres' postmaster (its
    backends come and go); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def mem(pid):
    r = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    r[k] = int(v.split()[0])
    except OSError:
        pass
    return r


def threads(pid):
    """{tid: (name, utime+stime)} of a process's threads."""
    r = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return r
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                st = f.read()
        except OSError:
            continue
        v = st.rsplit(")", 1)[1].split()
        r[t] = (st[st.index("(") + 1:st.rindex(")")], int(v[11]) + int(v[12]))
    return r


ROLES = ["gateway", "processor", "router", "warehouse"]


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


class Sampler:
    """CPU ticks and memory of named processes; "postgres" is the postmaster and its children."""

    def __init__(self, pids):
        self.pids = {k: int(v) for k, v in pids.items() if v}
        self.samples = []
        self.pg_kids, self.n = [], 0

    def sample(self, extra=None):
        if "postgres" in self.pids and self.n % 10 == 0:
            self.pg_kids = children(self.pids["postgres"])
        self.n += 1
        s = {"mono_ns": time.monotonic_ns(), "machine": machine_busy(), "cpu": {}, "rss": {},
             "hwm": {}}
        for name, pid in self.pids.items():
            t = ticks(pid)
            if name == "postgres":
                t = (t or 0) + sum(ticks(k) or 0 for k in self.pg_kids)
            s["cpu"][name] = t
            m = mem(pid)
            s["rss"][name], s["hwm"][name] = m.get("VmRSS"), m.get("VmHWM")
        s["threads"] = {n: threads(self.pids[n]) for n in ROLES if n in self.pids}
        s.update(extra or {})
        self.samples.append(s)
        return s

    def cpu_pct(self, a, b):
        """% of one core of each process between samples a and b, and of the whole machine."""
        span = (b["mono_ns"] - a["mono_ns"]) / 1e9
        r = {}
        for name in self.pids:
            if a["cpu"].get(name) is not None and b["cpu"].get(name) is not None:
                r[name] = round((b["cpu"][name] - a["cpu"][name]) / TCK / span * 100, 1)
        r["machine"] = round((b["machine"] - a["machine"]) / TCK / span * 100, 1)
        r["other"] = round(max(0.0, r["machine"] - sum(v for k, v in r.items() if k != "machine")), 1)
        return r

    def busiest_threads(self, a, b):
        """Each role's busiest thread between samples a and b: [name, % of one core]."""
        span = (b["mono_ns"] - a["mono_ns"]) / 1e9
        r = {}
        for role, th in b.get("threads", {}).items():
            before = a.get("threads", {}).get(role, {})
            best = max(((n, t - before.get(tid, (n, 0))[1]) for tid, (n, t) in th.items()),
                       key=lambda x: x[1], default=None)
            if best:
                r[role] = [best[0], round(best[1] / TCK / span * 100, 1)]
        return r


def read_unacked(path):
    ranges = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                first, n = line.split()
                ranges.append((int(first), int(n)))
    return ranges


def quantiles(values):
    if not values:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    values.sort()
    q = lambda p: values[min(len(values) - 1, max(0, int(p * len(values) + 0.999999) - 1))]
    return {"p50_s": round(q(0.50) / 1e9, 4), "p99_s": round(q(0.99) / 1e9, 4),
            "max_s": round(values[-1] / 1e9, 4)}


def sink_stats(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sink/stats", timeout=5) as r:
            return json.loads(r.read())
    except Exception:
        return None


def psql(dsn, sql):
    r = subprocess.run(["psql", dsn, "-qXAt", "-c", sql], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        return None
    return r.stdout


class Arrivals:
    """What arrived of the stamped events: the sink's record file, read as it grows, or the
    warehouse's ids. seen[seq] = 1 for each seq that arrived (a bytearray that grows)."""

    def __init__(self, spec, since):
        self.spec, self.seen, self.since = spec, bytearray(), since  # events sent before: not ours
        self.dups = self.count = 0
        self.lat, self.first_sent, self.last_arrival, self.offset = [], None, None, 0
        self.arrivals = []  # webhook: the arrival time of each event (its first arrival)
        self.acked, self.acked_seen = None, 0

    def _saw(self, seq, sent, arr=None):
        if sent < self.since:
            return
        if seq >= len(self.seen):
            self.seen.extend(bytes(seq + 1 - len(self.seen) + (1 << 16)))
        if self.seen[seq]:
            self.dups += 1
            return
        self.seen[seq] = 1
        self.count += 1
        if self.acked is not None and seq < len(self.acked) and self.acked[seq]:
            self.acked_seen += 1
        self.first_sent = sent if self.first_sent is None or sent < self.first_sent else self.first_sent
        if arr is not None:
            self.lat.append(arr - sent)
            self.arrivals.append(arr)
            self.last_arrival = arr if self.last_arrival is None or arr > self.last_arrival else self.last_arrival

    def update(self):
        """Reads what arrived since the last call (webhook) or everything (warehouse)."""
        if self.spec["kind"] == "warehouse":
            rows = psql(self.spec["dsn"], f"SELECT id FROM {self.spec['table']} WHERE id LIKE 'e2e-%'")
            for line in (rows or "").split():
                seq = int(line[4:16])
                if seq >= len(self.seen) or not self.seen[seq]:
                    self._saw(seq, int(line[17:36]))
            return
        # sluice-bench-sink --record --arrival: "messageId arrival_ns" lines; only whole lines
        with open(self.spec["record"], "rb") as f:
            f.seek(self.offset)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        self.offset += len(data)
        for line in data.split(b"\n"):
            if line.startswith(b"e2e-") and len(line) > 37 and line[4:16].isdigit():
                self._saw(int(line[4:16]), int(line[17:36]), int(line[37:]))

    def set_acked(self, acked):
        self.acked = acked
        n = min(len(acked), len(self.seen))
        self.acked_seen = sum(1 for q in range(n) if acked[q] and self.seen[q])


def steady_rate(arrivals, samples, base):
    """Events/s while 10% to 90% of the events arrived: from each event's arrival time, or (the
    warehouse) interpolated between the samples' counts."""
    if arrivals:
        arrivals = sorted(arrivals)
        n = len(arrivals)
        t10, t90 = arrivals[n // 10], arrivals[min(n - 1, n * 9 // 10)]
        return round(0.8 * n / ((t90 - t10) / 1e9)) if t90 > t10 else None
    pts = [(x["mono_ns"], x["arrived"] - base) for x in samples if x.get("arrived") is not None]
    if not pts or pts[-1][1] <= 0:
        return None
    total = pts[-1][1]

    def crossing(v):
        prev = None
        for t, c in pts:
            if c >= v:
                if prev is None or c == prev[1]:
                    return t
                return prev[0] + (v - prev[1]) / (c - prev[1]) * (t - prev[0])
            prev = (t, c)
        return None
    t10, t90 = crossing(0.1 * total), crossing(0.9 * total)
    return round(0.8 * total / ((t90 - t10) / 1e9)) if t10 is not None and t90 and t90 > t10 else None


def scenario(spec, out):
    """spec: name, kind (webhook|warehouse), loadgen (argv), unacked (file), pids, limit, quiet;
    webhook: sink_port, record; warehouse: dsn, table, probe (argv, optional)."""
    sampler = Sampler(spec["pids"])
    wh = spec["kind"] == "warehouse"

    def arrived():  # a cheap count of the stamped events that arrived (duplicates included)
        if wh:
            v = psql(spec["dsn"], f"SELECT count(*) FROM {spec['table']} WHERE id LIKE 'e2e-%'")
            return int(v) if v and v.strip() else None
        st = sink_stats(spec["sink_port"])
        return st["events"] if st else None

    base = arrived() or 0
    first = sampler.sample({"arrived": base})
    got = Arrivals(spec, first["mono_ns"])
    lg_out = open(out + ".loadgen.json", "w")
    lg_err = open(out + ".loadgen.log", "w")
    lg = subprocess.Popen(spec["loadgen"], stdout=lg_out, stderr=lg_err)
    sampler.pids["loadgen"] = lg.pid
    probe = None
    if spec.get("probe"):
        probe = subprocess.Popen(spec["probe"], stdout=open(out + ".probe.json", "w"),
                                 stderr=open(out + ".probe.log", "w"))
    load_end = res = None
    n_acked = stamped = 0
    last_change, last_val, reason, next_check = time.monotonic(), base, "limit", 0
    while True:
        time.sleep(0.5)
        a = arrived()
        s = sampler.sample({"arrived": a})
        if a is not None and a != last_val:
            last_val, last_change = a, time.monotonic()
        if not wh:
            got.update()
        if load_end is None and lg.poll() is not None:
            load_end = s
            sampler.pids.pop("loadgen", None)
            lg_out.close()
            lg_err.close()
            if lg.returncode != 0:
                sys.exit(f"{spec['name']}: sluice-loadgen failed: {open(out + '.loadgen.log').read()[-800:]}")
            res = json.loads(open(out + ".loadgen.json").read().strip().splitlines()[-1])
            stamped = res["stamped"]
            acked = bytearray([1]) * stamped
            for first_seq, n in read_unacked(spec["unacked"]):
                acked[first_seq:min(stamped, first_seq + n)] = bytes(max(0, min(stamped, first_seq + n) - first_seq))
            n_acked = sum(acked)
            got.set_acked(acked)
        if load_end is None:
            continue
        probe_done = probe is None or probe.poll() is not None
        if a is not None and a - base >= n_acked and time.monotonic() >= next_check:
            if wh:
                got.update()
                next_check = time.monotonic() + 2
            if got.acked_seen >= n_acked and probe_done:
                reason = "every acknowledged event arrived"
                if wh:  # the first poll that counted them all
                    got.last_arrival = next(x["mono_ns"] for x in sampler.samples
                                            if x.get("arrived") is not None and x["arrived"] - base >= n_acked)
                break
        if time.monotonic() - last_change > spec["quiet"] and probe_done:
            reason = f"nothing arrived for {spec['quiet']} s"
            break
        if (s["mono_ns"] - load_end["mono_ns"]) / 1e9 > spec["limit"]:
            reason = f"limit of {spec['limit']} s after the load"
            break
    if probe:
        if probe.poll() is None:
            probe.kill()
        probe.wait()
    got.update()
    end = sampler.samples[-1]
    if wh and got.last_arrival is None:
        got.last_arrival = end["mono_ns"]
    missing = n_acked - got.acked_seen
    foreign = sum(got.seen[stamped:])
    seconds = (got.last_arrival - got.first_sent) / 1e9 if got.first_sent and got.last_arrival else None
    load_s = (load_end["mono_ns"] - first["mono_ns"]) / 1e9
    # The window of the CPU figures: the load's start to the sample that saw the last arrival.
    done = next((x for x in sampler.samples if got.last_arrival and x["mono_ns"] >= got.last_arrival), end)
    if done is first:
        done = end
    rss = {}
    for name in spec["pids"]:
        vals = [x["rss"].get(name) for x in sampler.samples if x["rss"].get(name)]
        rss[name] = {"rss_max_kb": max(vals) if vals else None, "hwm_kb": end["hwm"].get(name)}
    r = {"name": spec["name"], "kind": spec["kind"], "stop_reason": reason, "loadgen": res,
         "stamped": stamped, "acked": n_acked, "unacked": stamped - n_acked,
         "arrived": got.count - foreign, "missing": missing, "duplicates": got.dups, "foreign": foreign,
         "load_s": round(load_s, 2), "first_sent_to_last_arrival_s": round(seconds, 3) if seconds else None,
         "events_per_s": round(n_acked / seconds) if seconds else None,
         "ingest_events_per_s": round(n_acked / res["seconds"]),
         "cpu_pct": sampler.cpu_pct(first, done), "cpu_pct_load": sampler.cpu_pct(first, load_end),
         "busiest_threads": sampler.busiest_threads(first, done),
         "rss": rss}
    r.update(quantiles(got.lat))
    r["events_per_s_steady"] = steady_rate(got.arrivals if not wh else None, sampler.samples, base)
    if probe:
        try:
            r["probe"] = json.loads(open(out + ".probe.json").read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            r["probe"] = None
    with open(out + ".samples.jsonl", "w") as f:
        for x in sampler.samples:
            f.write(json.dumps({k: v for k, v in x.items() if k != "threads"}) + "\n")
    with open(out, "w") as f:
        json.dump(r, f)
    print(json.dumps({k: v for k, v in r.items() if k not in ("rss", "loadgen")}), file=sys.stderr)


def run_ns(pid):
    """Nanoseconds its threads have run (schedstat; None once it is gone). Idle CPU is a few
    ticks in 10 s: utime+stime counts whole 10 ms ticks, sampled, so 0.9% could read 1.0."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    except OSError:
        return None
    return total


def idle(pids, seconds, out):
    sampler = Sampler(pids)
    a = sampler.sample()
    roles = [n for n in ("gateway", "processor", "router", "warehouse") if pids.get(n)]
    ns_a, t_a = {n: run_ns(pids[n]) for n in roles}, time.monotonic()
    time.sleep(seconds)
    b = sampler.sample()
    ns_b, t_b = {n: run_ns(pids[n]) for n in roles}, time.monotonic()
    cpu = sampler.cpu_pct(a, b)
    for n in ns_b:
        if ns_a.get(n) is not None and ns_b[n] is not None:
            cpu[n] = round((ns_b[n] - ns_a[n]) / 1e9 / (t_b - t_a) * 100, 2)
    r = {"seconds": seconds, "cpu_pct": cpu,
         "rss": {n: {"rss_kb": b["rss"].get(n), "hwm_kb": b["hwm"].get(n)} for n in pids}}
    with open(out, "w") as f:
        json.dump(r, f)


def report(work):
    def load(name):
        path = os.path.join(work, name + ".json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    meta = load("meta")
    kp, kc = load("kcat_produce"), load("kcat_consume")
    c1, cb = load("ceiling_single"), load("ceiling_batch")
    single, batch, whs, rate, idl = (load("single"), load("batch"), load("warehouse"),
                                    load("latency"), load("idle"))
    whl = load("wh_latency")
    quick = meta["quick"]
    loadavg_end = " ".join(open("/proc/loadavg").read().split()[:3])
    rows, fails = [], []

    def row(name, value, target="", ok=None):
        rows.append((name, value, target, "" if ok is None else ("ok" if ok else "MISS")))
    num = lambda v: "-" if v is None else f"{v:,.0f}"
    sec = lambda v: "-" if v is None else f"{v:.3f}"

    row("kcat produce, acks=all, idempotent (events/s)", num(kp and kp["events_per_s"]))
    row("kcat consume, same topic, from the start (events/s)", num(kc and kc["events_per_s"]))
    row("sink ceiling: loadgen -> sink, 1 event/request, 64 conns (ev/s)",
        num(c1 and c1["ok"] / c1["seconds"]))
    row(f"sink ceiling: loadgen -> sink, {meta['batch_size']} events/request, 8 conns (ev/s)",
        num(cb and cb["ok"] * meta["batch_size"] / cb["seconds"]))

    def scen(r, title, target=None):
        if r is None:
            row(f"{title}: not run", "-")
            return
        ok = r["missing"] == 0 and r["acked"] > 0
        if not ok:
            fails.append(f"{title}: {r['missing']} of {r['acked']} acknowledged events missing "
                         f"({r['stop_reason']})")
        row(f"{title}: offered / acknowledged by the gateway (ev/s)",
            f"{num(r['loadgen']['target_rps'] * meta['ingest_batch'] if r['kind'] != 'latency' else r['loadgen']['target_rps'])} / {num(r['ingest_events_per_s'])}")
        if target is not None:
            row(f"{title}: end to end, first send to last arrival (ev/s)", num(r["events_per_s"]),
                f">= {num(target)}", r["events_per_s"] is not None and r["events_per_s"] >= target)
        else:
            row(f"{title}: end to end, first send to last arrival (ev/s)", num(r["events_per_s"]))
        row(f"{title}: steady, while 10% to 90% of the events arrived (ev/s)", num(r.get("events_per_s_steady")))
        row(f"{title}: acknowledged / arrived / missing", f"{num(r['acked'])} / {num(r['arrived'])} / {num(r['missing'])}",
            "0 missing", r["missing"] == 0)
        if r["duplicates"]:
            row(f"{title}: duplicates at the sink", num(r["duplicates"]))
        if r.get("p50_s") is not None:
            row(f"{title}: latency send -> sink p50 / p99 / max (s)",
                f"{sec(r['p50_s'])} / {sec(r['p99_s'])} / {sec(r['max_s'])}")
        cpu = r["cpu_pct"]
        row(f"{title}: CPU gw / proc / router / wh (% of one core)",
            " / ".join(f"{cpu.get(n, 0):.0f}" for n in ROLES))
        row(f"{title}: CPU broker / postgres / sink / loadgen (%)",
            " / ".join(f"{cpu.get(n, 0):.0f}" for n in ("broker", "postgres", "sink", "loadgen")))
        row(f"{title}: CPU other processes / whole machine (of {meta['cpus'] * 100}%)",
            f"{cpu.get('other', 0):.0f} / {cpu.get('machine', 0):.0f}")
        busy(r, title)
        per_event(r, title)
        row(f"{title}: RSS max gw / proc / router / wh (MB)",
            " / ".join(f"{(r['rss'][n]['rss_max_kb'] or 0) / 1024:.0f}" for n in ROLES))

    def busy(r, title):
        bt = r.get("busiest_threads") or {}
        label = f"{title}: " if title.strip() else "  "
        row(f"{label}busiest thread of gw / proc / router / wh (%)",
            " / ".join(f"{bt[n][0][:15]} {bt[n][1]:.0f}" if n in bt else "-" for n in ROLES))

    def per_event(r, title):
        """CPU time per event end to end, per process, and what all of it allows on this machine."""
        cpu, eps = r["cpu_pct"], r.get("events_per_s")
        if not eps:
            return
        names = ROLES + ["broker", "postgres", "sink"]
        us = {n: cpu.get(n, 0) / 100 * 1e6 / eps for n in names}
        total = sum(us.values())
        row(f"{title}: CPU per event gw / proc / router / wh / broker / pg / sink (us)",
            " / ".join(f"{us[n]:.0f}" for n in names))
        row(f"{title}: all of it per event (us) -> ev/s if {meta['cpus']} CPUs were its alone",
            f"{total:.0f} -> {num(meta['cpus'] * 1e6 / total) if total else '-'}")

    scen(single, "1 event/request", 20000)
    scen(batch, f"batched ({meta['batch_size']}/request)", 50000)
    if whs:
        scen(whs, "warehouse")
    if whl:
        p = whl.get("probe") or {}
        row(f"warehouse, {num(whl['ingest_events_per_s'])} ev/s beside the probes: acked / arrived / missing",
            f"{num(whl['acked'])} / {num(whl['arrived'])} / {num(whl['missing'])}", "0 missing", whl["missing"] == 0)
        if whl["missing"]:
            fails.append(f"warehouse latency run: {whl['missing']} of {whl['acked']} acknowledged events missing")
        row("warehouse: probes answered / rows seen", f"{p.get('answered', '-')} / {p.get('seen', '-')}",
            "all", bool(p) and p.get("unseen") == 0)
        row("warehouse: 200 -> row visible p50 / p99 / max (s)",
            f"{sec(p.get('p50_s'))} / {sec(p.get('p99_s'))} / {sec(p.get('max_s'))}",
            f"<= sync {meta['sync_s']:g} + 5", p.get("max_s") is not None and p["max_s"] <= meta["sync_s"] + 5)
        if p.get("unseen"):
            fails.append(f"warehouse: {p['unseen']} latency probes never seen")
    if rate:
        r = rate
        lg = r["loadgen"]
        if r["missing"]:
            fails.append(f"latency run: {r['missing']} of {r['acked']} acknowledged events missing")
        row(f"at {num(meta['latency_rate'])} ev/s (/v1/track, 1 event/request): achieved (ev/s)",
            num(r["ingest_events_per_s"]))
        row("  acknowledged / arrived / missing", f"{num(r['acked'])} / {num(r['arrived'])} / {num(r['missing'])}",
            "0 missing", r["missing"] == 0)
        row("  gateway answer (send -> 200) p50 / p99 (ms)", f"{lg['p50_ms']:.2f} / {lg['p99_ms']:.2f}")
        row("  end to end (send -> sink) p50 (s)", sec(r["p50_s"]))
        row("  end to end (send -> sink) p99 (s)", sec(r["p99_s"]), "<= 1", r["p99_s"] is not None and r["p99_s"] <= 1)
        row("  end to end max (s)", sec(r["max_s"]))
        cpu = r["cpu_pct"]
        row("  CPU gw / proc / router / wh (% of one core)", " / ".join(f"{cpu.get(n, 0):.0f}" for n in ROLES))
        row("  CPU broker / postgres / sink / loadgen (%)",
            " / ".join(f"{cpu.get(n, 0):.0f}" for n in ("broker", "postgres", "sink", "loadgen")))
        row(f"  CPU other processes / whole machine (of {meta['cpus'] * 100}%)",
            f"{cpu.get('other', 0):.0f} / {cpu.get('machine', 0):.0f}")
        busy(r, " ")
        row("  RSS max gw / proc / router / wh (MB)",
            " / ".join(f"{(r['rss'][n]['rss_max_kb'] or 0) / 1024:.0f}" for n in ROLES))
    # RSS per role at the sustained load: the largest over the load scenarios.
    runs = [x for x in (single, batch, whs, whl, rate) if x]
    for n in ROLES:
        hwm = max((x["rss"][n]["hwm_kb"] or 0 for x in runs), default=0) / 1024
        rss = max((x["rss"][n]["rss_max_kb"] or 0 for x in runs), default=0) / 1024
        row(f"{n}: RSS under load, VmRSS max / VmHWM (MB)", f"{rss:.0f} / {hwm:.0f}", "<= 128", hwm <= 128)
    if idl:
        for n in ROLES:
            v = idl["cpu_pct"].get(n)
            row(f"{n}: idle CPU over {idl['seconds']:g} s (% of one core)", "-" if v is None else f"{v:.2f}",
                "< 1", v is not None and v < 1)

    out = {"meta": meta, "loadavg_at_end": loadavg_end, "kcat_produce": kp, "kcat_consume": kc,
           "ceiling_single": c1, "ceiling_batch": cb, "single": single, "batch": batch,
           "warehouse": whs, "wh_latency": whl, "latency": rate, "idle": idl,
           "table": [dict(zip(("figure", "value", "target", "ok"), x)) for x in rows], "failures": fails}
    with open(os.path.join(work, "e2e.json"), "w") as f:
        json.dump(out, f, indent=1)
    w0 = max(len(x[0]) for x in rows)
    w1 = max(18, max(len(x[1]) for x in rows))
    print()
    print("Sluice end-to-end benchmark" + (" (--quick: smoke test, not figures to quote)" if quick else ""))
    print(f"gateway, processor, router and warehouse as separate processes; single-node Kafka "
          f"(topics of {meta['partitions']} partitions), throwaway Postgres; events of ~{meta['event_bytes']} B; "
          f"ingest /v1/batch of {meta['ingest_batch']} (throughput runs); {meta['cpus']} CPUs, load average "
          f"{meta['loadavg']} at start, {loadavg_end} at the end")
    print(f"| {'figure':<{w0}} | {'value':>{w1}} | {'target':<17} | {'':<4} |")
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|{'-' * 19}|{'-' * 6}|")
    for name, value, target, mark in rows:
        print(f"| {name:<{w0}} | {value:>{w1}} | {target:<17} | {mark:<4} |")
    print(f"\nJSON: {work}/e2e.json")
    for f_ in fails:
        print("FAILED: " + f_)
    return 1 if fails else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scenario")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    i = sub.add_parser("idle")
    i.add_argument("--pids", required=True)
    i.add_argument("--seconds", type=float, required=True)
    i.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    a = ap.parse_args()
    if a.cmd == "scenario":
        with open(a.spec) as f:
            scenario(json.load(f), a.out)
    elif a.cmd == "idle":
        idle(json.loads(a.pids), a.seconds, a.out)
    else:
        sys.exit(report(a.work))


if __name__ == "__main__":
    main()
