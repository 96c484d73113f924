"""Accounting: where did every acknowledged event go?

Definitions (per destination):
- A *delivery* is a request the sink answered 2xx within the router's timeout: the router was
  told it succeeded. A request answered 5xx, or answered after the router's timeout (the router
  had given up on it and will send it again), is an *attempt*, not a delivery. Late 2xx answers
  are counted separately (`late_2xx`): a real destination may have acted on them, so they are
  duplicates that HTTP without idempotency keys can't avoid.
- *Lost*: an event acknowledged by the gateway (200) with no delivery at a destination it was
  routed to and no dead letter (sluice_failed_events) for that destination.
- *Duplicates*: deliveries beyond the first of the same messageId.
- *Order*: each user's deliveries must carry non-decreasing sequence numbers, in the order the
  sink received them. A delivery of seq s after a delivery of a later seq t > s is a violation:
  `reorder` if it is the first delivery of s (t overtook it), `replay` if s had been delivered
  before (an earlier event sent again after a later one). A repeat of the latest seq is only a
  duplicate. Warehouse rows have no arrival order; they are checked for presence and duplicates.
- A replay is *explained* when the router had a reason to send the event again: a router was
  SIGKILLed between its first delivery and the replay (a delivery whose outcome was not yet in
  Postgres is sent again by the partition's next owner), or the router recorded a failed
  attempt for it (sluice_jobs state `failed`: a timed-out batch is sent again whole). Every
  other replay, and every reorder, is a bug.
"""
import json
from datetime import datetime

import harness as h


class SinkReader:
    """Reads a dev sink's --out file incrementally (each call reads what was appended since
    the last). deliveries: (messageId, userId, seq) in arrival order; attempts counts every
    event received (any answer); late counts events answered 2xx after timeout_ms."""

    def __init__(self, path, timeout_ms):
        self.path, self.timeout_ms = path, timeout_ms
        self.offset = 0
        self.deliveries, self.attempts, self.late = [], 0, 0

    def read(self):
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return self
        with f:
            f.seek(self.offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written
                self.offset += len(line)
                self._record(json.loads(line))
        return self

    def ids(self):
        return {d[0] for d in self.deliveries}

    def _record(self, rec):
        try:
            body = json.loads(rec["body"])
        except ValueError:
            return
        events = body if isinstance(body, list) else [body]
        self.attempts += len(events)
        status, delay = rec.get("status", 200), rec.get("delay_ms", 0)
        if not 200 <= status < 300:
            return
        if delay >= self.timeout_ms:
            self.late += len(events)
            return
        at = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
        for e in events:
            if isinstance(e, dict):
                self.deliveries.append((e.get("messageId"), e.get("userId"),
                                        (e.get("properties") or {}).get("seq"), at))


def warehouse_rows(dsn, namespace, table="tracks"):
    """messageId -> rows in the warehouse table (an absent table: no rows yet)."""
    try:
        rows = h.psql(dsn, f'SELECT id, count(*) FROM "{namespace}"."{table}" GROUP BY id')
    except Exception:  # noqa: BLE001 - not created yet, or Postgres restarting
        return None
    return {r[0]: int(r[1]) for r in rows}


def dead_letters(dsn):
    """(messageId, destination_id) -> (stage, reason) from sluice_failed_events."""
    try:
        rows = h.psql(dsn, "SELECT message_id, coalesce(destination_id, ''), stage, reason "
                      "FROM sluice_failed_events")
    except Exception:  # noqa: BLE001
        return {}
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def failed_attempts(dsn):
    """(messageId, destination_id) of jobs with a failed attempt recorded in sluice_jobs."""
    try:
        rows = h.psql(dsn, "SELECT DISTINCT message_id, destination_id FROM sluice_jobs "
                      "WHERE state = 'failed'")
    except Exception:  # noqa: BLE001
        return set()
    return {(r[0], r[1]) for r in rows}


def check_order(deliveries, dest_id=None, router_kills=(), failed=frozenset()):
    """Returns (violations, duplicates, counts): violations as dicts (kind reorder or replay;
    a replay with its explanation); counts messageId -> deliveries. router_kills: epoch times
    of router SIGKILLs; failed: (messageId, destination) pairs with a failed attempt."""
    last = {}  # user -> highest seq delivered
    counts, first_at = {}, {}
    violations = []
    for mid, user, seq, at in deliveries:
        seen = counts.get(mid, 0)
        counts[mid] = seen + 1
        first_at.setdefault(mid, at)
        if seq is None or user is None:
            continue
        top = last.get(user)
        if top is not None and seq < top:
            v = {"user": user, "seq": seq, "after_seq": top, "messageId": mid,
                 "kind": "replay" if seen else "reorder"}
            if seen:
                if any(first_at[mid] - 1 <= k <= at for k in router_kills):
                    v["explained"] = "router SIGKILLed in between"
                elif (mid, dest_id) in failed:
                    v["explained"] = "router recorded a failed attempt"
            violations.append(v)
        elif top is None or seq > top:
            last[user] = seq
    dups = sum(n - 1 for n in counts.values() if n > 1)
    return violations, dups, counts


def account_destination(dest_id, acked, counts, dlq, resent, late=0, attempts=None,
                        violations=None):
    """One destination's figures. counts: messageId -> deliveries there."""
    lost, dead = [], 0
    for mid in acked:
        if counts.get(mid, 0) == 0:
            if (mid, dest_id) in dlq:
                dead += 1
            else:
                lost.append(mid)
    dups = sum(n - 1 for n in counts.values() if n > 1)
    dup_resent = sum(n - 1 for m, n in counts.items() if n > 1 and m in resent)
    delivered_acked = sum(1 for m in acked if counts.get(m, 0))
    out = {
        "delivered_unique": len(counts),
        "delivered_acknowledged": delivered_acked,
        "delivered_unacknowledged": len(counts) - delivered_acked,
        "dead_lettered": dead,
        "lost": len(lost),
        "lost_sample": sorted(lost)[:20],
        "duplicates": dups,
        "duplicates_pct": round(100.0 * dups / max(1, len(acked)), 4),
        "duplicates_of_client_resends": dup_resent,
    }
    if attempts is not None:
        out["attempts_received"] = attempts
        out["late_2xx"] = late
    if violations is not None:
        out["order_violations"] = len(violations)
        out["order_violations_by_kind"] = {
            "reorder": sum(1 for v in violations if v["kind"] == "reorder"),
            "replay_after_router_kill": sum(
                1 for v in violations if v.get("explained", "").startswith("router SIGKILL")),
            "replay_after_failed_attempt": sum(
                1 for v in violations if v.get("explained", "").startswith("router recorded")),
            "replay_unexplained": sum(
                1 for v in violations if v["kind"] == "replay" and "explained" not in v)}
        out["order_violations_sample"] = (
            [v for v in violations if "explained" not in v][:10] +
            [v for v in violations if "explained" in v][:10])
    return out
