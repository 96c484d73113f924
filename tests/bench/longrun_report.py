#!/usr/bin/env python3
"""The table of tests/bench/longrun, from WORK/samples.jsonl and WORK/result.json; also writes
WORK/longrun.json. Exits 1 when an acknowledged event is missing at A or at B.

    longrun_report.py WORK
"""
import json
import sys


def main():
    work = sys.argv[1]
    res = json.load(open(f"{work}/result.json"))
    samples = [json.loads(line) for line in open(f"{work}/samples.jsonl")]
    t_load, minutes = res["t_load"], res["minutes"]
    for s in samples:
        s["min"] = (s["t"] - t_load) / 60
        w = s["workers"]
        s["roles"]["js-workers"] = {"vmrss": sum(x.get("vmrss", 0) for x in w),
                                    "vmhwm": max([x.get("vmhwm", 0) for x in w] or [0]),
                                    "cpu_pct": round(sum(x.get("cpu_pct", 0) for x in w), 1),
                                    "count": len(w)}
    load = [s for s in samples if s["phase"] == "load"]
    roles = ["gateway", "processor", "js-workers", "router", "kafka", "postgres"]  # postgres: the postmaster
    marks = [m for m in (5, 15, 30, 45, 60) if m <= minutes] or [minutes]
    if minutes < 5:
        marks = list(range(1, minutes + 1))

    def at(minute):  # the load sample nearest to that minute
        return min(load, key=lambda s: abs(s["min"] - minute)) if load else None

    def mb(kb):
        return "-" if kb is None else f"{kb / 1024:.0f}"

    def rss(s, role):
        return s["roles"].get(role, {}).get("vmrss") if s else None

    out = {"result": res, "rss_mb": {}, "growth": {}, "a_rate": [], "parked": []}
    loadavg_end = " ".join(open("/proc/loadavg").read().split()[:3])
    mean_load1 = sum(s["load1"] for s in load) / len(load) if load else 0
    print()
    print(f"Sluice long run: {minutes} min at {res['rate']:,} events/s to /v1/batch (10 events per "
          f"request); A healthy with a JavaScript transformEvent, B answering 503 until the end")
    print(f"load average {res['loadavg_at_start']} at start, {loadavg_end} at the end, "
          f"1-min load average over the load {mean_load1:.2f} (2 CPUs, shared with other work)")
    print()
    head = " | ".join(f"{m:>3} min" for m in marks)
    print(f"| RSS (MB)     | {head} |    max | min 10 -> end | growth |")
    print("|" + "-" * 14 + "|" + "|".join("-" * 9 for _ in marks) + "|--------|---------------|--------|")
    ten = at(min(10, minutes / 2))
    end = load[-1] if load else None
    for role in roles:
        vals = [rss(at(m), role) for m in marks]
        mx = max([rss(s, role) or 0 for s in samples] or [0])
        peak = max([s["roles"].get(role, {}).get("vmhwm", 0) for s in samples] or [0])
        a, b = rss(ten, role), rss(end, role)
        g = None if not a or b is None else (b - a) / a * 100
        out["rss_mb"][role] = {str(m): v and round(v / 1024, 1) for m, v in zip(marks, vals)}
        out["rss_mb"][role]["max"] = round(mx / 1024, 1)
        out["rss_mb"][role]["hwm"] = round(peak / 1024, 1)
        out["growth"][role] = None if g is None else round(g, 1)
        cells = " | ".join(f"{mb(v):>7}" for v in vals)
        gs = "-" if g is None else f"{g:+.1f}%"
        print(f"| {role:<12} | {cells} | {mb(mx):>6} | {mb(a):>5} -> {mb(b):<5}| {gs:>6} |")
    print(f"(minute 10 is the sample at {ten['min']:.1f} min; the end the last sample of the load, "
          f"{end['min']:.1f} min; max is the largest VmRSS sample; js-workers: "
          f"{end['roles']['js-workers']['count']} processes, summed)" if ten and end else "")
    print()
    # CPU: mean over the load phase
    cpu = {r: [s["roles"].get(r, {}).get("cpu_pct") for s in load] for r in roles}
    cpu = {r: [v for v in vs if v is not None] for r, vs in cpu.items()}
    print("CPU over the load, mean (% of one core): " + ", ".join(
        f"{r} {sum(v) / len(v):.0f}" for r, v in cpu.items() if v))
    print()
    # A's rate and B's parked count per interval
    step = 5 if minutes >= 10 else 0.5
    print("| interval (min) | A events/s | B parked (end) | oldest parked (s) | load1 |")
    print("|----------------|------------|----------------|-------------------|-------|")
    edge, prev = 0.0, None
    points = [s for s in load if s["a_events"] is not None]
    if points:
        prev = points[0]
    while prev and edge < minutes:
        nxt = edge + step
        first = min(points, key=lambda s: abs(s["min"] - edge))
        last = min(points, key=lambda s: abs(s["min"] - nxt))
        dt = last["t"] - first["t"]
        r = (last["a_events"] - first["a_events"]) / dt if dt > 0 else 0
        out["a_rate"].append({"from": edge, "to": nxt, "events_per_s": round(r)})
        out["parked"].append({"at": nxt, "parked": last["parked"], "oldest_s": last["parked_oldest_s"]})
        pk = "-" if last["parked"] is None else f"{last['parked']:,.0f}"
        old = "-" if last["parked_oldest_s"] is None else f"{last['parked_oldest_s']:,.0f}"
        print(f"| {edge:>5g} to {nxt:<5g} | {r:>10,.0f} | {pk:>14} | {old:>17} | {last['load1']:>5.2f} |")
        edge = nxt
    print()
    a, b = res["a"], res["b"]
    drain = res["t_end"] - res["t_b"]

    def row(name, value):
        print(f"| {name:<58} | {value:>22} |")
    print(f"| {'':<58} | {'':>22} |")
    print(f"|{'-' * 60}|{'-' * 24}|")
    row("events acknowledged by the gateway", f"{res['acked']:,}")
    row("events in the events topic (distinct messageIds)", f"{res['in_topic']:,} ({res['expected_ids']:,})")
    row("B: parked when B came back", f"{res['parked_before']:,}")
    row("B: delivered / parked when the router was SIGKILLed",
        f"{res['b_at_kill']:,} / {res['parked_at_kill']:,}")
    row("B: drain time, healthy again to every event (s)",
        f"{drain:,.0f}" + ("" if res["drained"] else " (not drained)"))
    row("B: parked at the end", f"{res['parked_end']:,}")
    for name, x in (("A", a), ("B", b)):
        row(f"{name}: received / distinct messageIds", f"{x['received']:,} / {x['unique']:,}")
        row(f"{name}: lost (acknowledged, never received; must be 0)", f"{x['missing']:,}")
        if x.get("still_parked"):
            row(f"{name}: not received yet, still parked (not lost)", f"{x['still_parked']:,}")
        row(f"{name}: duplicates", f"{x['duplicates']:,}")
    lost = a["missing"] + b["missing"]
    out["lost"] = lost
    out["drain_s"] = round(drain, 1)
    json.dump(out, open(f"{work}/longrun.json", "w"), indent=2)
    print(f"\nJSON: {work}/longrun.json; samples: {work}/samples.jsonl")
    if lost or res["in_topic"] < res["acked"]:
        print("LOST EVENTS: see above")
        sys.exit(1)


if __name__ == "__main__":
    main()
