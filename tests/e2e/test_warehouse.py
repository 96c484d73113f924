#!/usr/bin/env python3
"""The warehouse end to end: events through gateway -> processor -> `sluice warehouse` ->
a Postgres warehouse (a second database on the test Postgres), checked with SQL.

  --case types     all six event types: tables, columns, types and values; `users` after
                   several identifies; an injection-named event is a harmless table
  --case evolve    a new property adds a column, a new event adds a table, a value of the
                   wrong type goes to rudder_discards; two namespaces load side by side
  --case crash     SIGKILL of the warehouse during uploads, restart: no row lost or doubled
  --case takeover  two warehouse instances; the one loading an upload is SIGKILLed while its
                   load waits on a lock: the other takes the upload over when the lease
                   (warehouse.lease, 5 s here) lapses and loads it, every row once
  --case commands  `sluice warehouse uploads` (text and --json); an upload that fails is
                   retried with backoff, aborted, and `sluice warehouse retry` loads it
  --case options   warehouse.workers, .load_parallelism and .lease: three uploads claimed at
                   once, an upload's tables loading in parallel, 3 s claims
  --case orphans   staging directories left by a crash are removed at start
  --case bytecap   warehouse.max_buffered_bytes: a busy destination syncs early in small
                   uploads, a quiet one keeps its schedule, every event loads once
"""
import argparse
import json
import os
import signal
import subprocess
import time

import harness as h

KEY = "e2e-write-key"
TYPES = ["track", "identify", "page", "screen", "group", "alias"]


def dsn_fields(dsn):
    out = {}
    for part in dsn.split():
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


class Warehouse:
    """A database on the test Postgres that plays the destination's warehouse."""

    def __init__(self, env, suffix="wh"):
        self.db = ("e2e_" + env.name + "_" + suffix).replace("-", "_")
        self.dsn = h.fresh_database(h.pg_dsn(), self.db)
        f = dsn_fields(h.pg_dsn())
        self.config = {"host": f.get("host", "127.0.0.1"), "port": f.get("port", "5432"),
                       "database": self.db, "user": f.get("user", "postgres"),
                       "password": f.get("password", ""), "sslMode": "disable"}

    def sql(self, q):
        return h.psql(self.dsn, q)

    def one(self, q):
        r = self.sql(q)
        return r[0][0] if r else None

    def count(self, ns, table):
        return int(self.one(f'SELECT count(*) FROM "{ns}"."{table}"'))

    def tables(self, ns):
        return {r[0] for r in self.sql(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{ns}'")}

    def columns(self, ns, table):
        return {r[0]: r[1] for r in self.sql(
            "SELECT column_name, data_type FROM information_schema.columns WHERE "
            f"table_schema = '{ns}' AND table_name = '{table}'")}

    def wait_count(self, ns, table, n, timeout=30):
        def check():
            if table not in self.tables(ns):
                return False
            return self.count(ns, table) >= n
        h.wait_for(f"{n} rows in {ns}.{table}", check, timeout, interval=0.25)
        got = self.count(ns, table)
        if got != n:
            h.fail(f"{ns}.{table} has {got} rows, expected {n}")


def pg_dest(dest_id, wh, **extra):
    cfg = dict(wh.config)
    cfg.update(extra)
    return {"id": dest_id, "name": dest_id, "enabled": True, "config": cfg,
            "destinationDefinition": {"name": "POSTGRES", "displayName": "Postgres",
                                      "config": {"supportedMessageTypes": TYPES}}}


def config(dests, extra_sources=()):
    cfg = h.workspace_config("http://127.0.0.1:9", write_key=KEY, extra_sources=extra_sources)
    cfg["sources"][0]["destinations"] = dests
    cfg["sources"][0]["name"] = "Web App"
    return cfg


def wh_env(env, **over):
    out = {"SLUICE_WAREHOUSE_SYNC_INTERVAL": "1s",
           # A SIGKILLed member leaves no LeaveGroup: a short session lets its successor in
           # sooner; new topics are seen within a second.
           "SLUICE_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "SLUICE_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
           "SLUICE_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": "1000",
           "SLUICE_WAREHOUSE_RETRY_BASE": "200ms",
           "SLUICE_WAREHOUSE_STAGING_DIR": os.path.join(env.workdir, "staging"),
           "SLUICE_WAREHOUSE_PORT": str(h.free_port()),
           "SLUICE_WAREHOUSE_INSTANCE_ID": "e2e-wh-1"}
    out.update(over)
    return out


def send(p, path, ev, key=KEY):
    st, body, _ = h.http("POST", p.url + path, ev, write_key=key)
    if st != 200:
        h.fail(f"POST {path}: {st} {body!r}")


def sluice(env, p, *args):
    r = subprocess.run([h.SLUICE] + list(args), env=p.env, capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout, r.stderr


def uploads(env, p, *args):
    rc, out, err = sluice(env, p, "warehouse", "uploads", "--json", *args)
    if rc != 0:
        h.fail(f"sluice warehouse uploads: exit {rc}: {err}")
    return json.loads(out)


def metric(p, name):
    st, body, _ = h.http("GET", p.url + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_uploads_settled(env, p, timeout=30):
    def check():
        us = uploads(env, p)
        return us and all(u["state"] == "exported_data" for u in us)
    h.wait_for("every upload exported", check, timeout, interval=0.3)


# ---- cases ----

def case_types(env):
    wh = Warehouse(env)
    env.write_workspace(config([pg_dest("d-pg", wh)]))
    h.create_topics(env)
    p = env.start("all", **wh_env(env))
    env.wait_healthy(p)
    ns = "web_app"  # the source's name, snake_cased (no namespace in the config)
    ctx = {"library": {"name": "e2e", "version": "1.0"}, "locale": "en-US"}
    t0 = time.time()
    send(p, "/v1/batch", {"batch": [
        {"type": "track", "userId": "u1", "messageId": "m-track", "event": "Order Completed",
         "context": ctx, "originalTimestamp": "2026-11-26T10:00:00.000Z",
         "properties": {"revenue": 12.5, "count": 3, "coupon": "X1", "paid": True,
                        "when": "2026-11-26T09:00:00.000Z", "cart": {"size": 2},
                        "tags": ["a", "b"]}},
        {"type": "page", "userId": "u1", "messageId": "m-page", "name": "Home",
         "properties": {"path": "/", "referrer": "https://example.com"}},
        {"type": "screen", "userId": "u1", "messageId": "m-screen", "name": "Main",
         "properties": {"orientation": "portrait"}},
        {"type": "group", "userId": "u1", "messageId": "m-group", "groupId": "g1",
         "traits": {"industry": "tech", "employees": 40}},
        {"type": "alias", "userId": "u1", "messageId": "m-alias", "previousId": "anon-1"},
        {"type": "track", "userId": "u2", "messageId": "m-evil",
         "event": 'x"; DROP TABLE tracks; --', "properties": {"a": 1}},
    ]})
    send(p, "/v1/identify", {"userId": "u1", "messageId": "m-id1",
                             "traits": {"name": "Ann", "plan": "free", "logins": 1}})
    send(p, "/v1/identify", {"userId": "u2", "messageId": "m-id2", "traits": {"name": "Bob"}})
    wh.wait_count(ns, "identifies", 2)
    h.log(f"first rows visible {time.time() - t0:.1f}s after the gateway's 200 (the "
          f"consumer groups were joining)")
    # Later identifies of u1 change some traits: users keeps the latest of each.
    time.sleep(0.05)
    t1 = time.time()
    send(p, "/v1/identify", {"userId": "u1", "messageId": "m-id3",
                             "traits": {"plan": "pro", "logins": 2, "company": {"name": "Acme"}}})
    time.sleep(0.05)
    send(p, "/v1/identify", {"userId": "u1", "messageId": "m-id4", "traits": {"logins": 3}})
    wh.wait_count(ns, "identifies", 4)
    latency = time.time() - t1
    h.log(f"rows visible {latency:.1f}s after the gateway's 200 (sync interval 1 s)")
    if latency > 1 + 5 + 2:
        h.fail(f"rows took {latency:.1f}s to appear with a 1 s sync interval")
    wh.wait_count(ns, "tracks", 2)
    for t in ("pages", "screens", "groups", "aliases", "order_completed"):
        wh.wait_count(ns, t, 1)

    tables = wh.tables(ns)
    h.log("tables:", sorted(tables))
    for t in ("tracks", "identifies", "users", "pages", "screens", "groups", "aliases",
              "order_completed"):
        if t not in tables:
            h.fail(f"no table {t} in {ns}: {sorted(tables)}")
    # The injection-named event is an ordinary table with a safe name; tracks is intact.
    evil = [t for t in tables if "drop" in t]
    if len(evil) != 1 or not all(c.isalnum() or c == "_" for c in evil[0]):
        h.fail(f"the injection-named event should make one table of [a-z0-9_]: {sorted(tables)}")
    if wh.count(ns, evil[0]) != 1:
        h.fail(f"{evil[0]} should hold the event's row")
    if wh.one(f"SELECT event_text FROM {ns}.tracks WHERE id = 'm-evil'") != \
            'x"; DROP TABLE tracks; --':
        h.fail("tracks.event_text should keep the event's name as it was sent")

    cols = wh.columns(ns, "order_completed")
    want = {"id": "text", "user_id": "text", "received_at": "timestamp with time zone",
            "revenue": "double precision", "count": "bigint", "coupon": "text",
            "paid": "boolean", "_when": "timestamp with time zone", "cart_size": "bigint",
            "tags": "text", "context_library_name": "text", "event": "text",
            "event_text": "text", "original_timestamp": "timestamp with time zone",
            "uuid_ts": "timestamp with time zone"}
    for c, ty in want.items():
        if cols.get(c) != ty:
            h.fail(f"order_completed.{c}: {cols.get(c)!r}, expected {ty!r} (columns: {cols})")
    row = wh.sql(f"SELECT revenue, count, coupon, paid, cart_size, context_library_name, event, "
                 f"user_id, to_char(_when AT TIME ZONE 'UTC', 'HH24:MI') FROM "
                 f"{ns}.order_completed WHERE id = 'm-track'")
    if row != [["12.5", "3", "X1", "t", "2", "e2e", "order_completed", "u1", "09:00"]]:
        h.fail(f"order_completed row: {row}")
    if wh.one(f"SELECT count(*) FROM {ns}.tracks WHERE id = 'm-track' AND "
              f"event = 'order_completed' AND event_text = 'Order Completed'") != "1":
        h.fail("tracks row of m-track")
    checks = [
        (f"SELECT name, path FROM {ns}.pages", [["Home", "/"]]),
        (f"SELECT name, orientation FROM {ns}.screens", [["Main", "portrait"]]),
        (f"SELECT group_id, industry, employees FROM {ns}.groups", [["g1", "tech", "40"]]),
        (f"SELECT previous_id, user_id FROM {ns}.aliases", [["anon-1", "u1"]]),
        (f"SELECT id, name, plan, logins, company_name FROM {ns}.users ORDER BY id",
         [["u1", "Ann", "pro", "3", "Acme"], ["u2", "Bob", "", "", ""]]),
    ]
    for q, want_rows in checks:
        def ok(q=q, want_rows=want_rows):
            return wh.sql(q) == want_rows
        h.wait_for(f"{q} = {want_rows}", ok, 15, interval=0.3)
    if wh.columns(ns, "users").get("logins") != "bigint":
        h.fail(f"users.logins: {wh.columns(ns, 'users')}")

    wait_uploads_settled(env, p)
    us = uploads(env, p)
    if sum(u["events"] for u in us) != 10:
        h.fail(f"uploads should hold the 10 events: {[(u['id'], u['events']) for u in us]}")
    if metric(p, "sluice_warehouse_rows_loaded_total") < 10:
        h.fail("sluice_warehouse_rows_loaded_total should count the rows loaded")
    if metric(p, 'sluice_warehouse_uploads{state="exported_data"}') < 1:
        h.wait_for("the uploads gauge",
                   lambda: metric(p, 'sluice_warehouse_uploads{state="exported_data"}') >= 1, 5)
    # Exported uploads' staging files are removed.
    left = [f for _, _, fs in os.walk(os.path.join(env.workdir, "staging")) for f in fs]
    if left:
        h.fail(f"staging files left after every upload was exported: {left}")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")


def case_evolve(env):
    wh = Warehouse(env)
    other = {"id": "src-two", "name": "Second Source", "writeKey": "key-two", "enabled": True,
             "sourceDefinition": {"name": "HTTP", "category": "eventStream"},
             "destinations": [pg_dest("d-pg2", wh)]}  # namespace: the source name
    env.write_workspace(config([pg_dest("d-pg1", wh, namespace="Analytics One")],
                               extra_sources=[other]))
    h.create_topics(env)
    p = env.start("all", **wh_env(env))
    env.wait_healthy(p)
    ns1, ns2 = "analytics_one", "second_source"
    send(p, "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "e1",
                          "properties": {"plan": "pro", "seats": 3}})
    send(p, "/v1/track", {"userId": "u9", "event": "Signed Up", "messageId": "o1",
                          "properties": {"plan": "team"}}, key="key-two")
    wh.wait_count(ns1, "signed_up", 1)
    wh.wait_count(ns2, "signed_up", 1)
    if "referrer" in wh.columns(ns1, "signed_up"):
        h.fail("referrer should not exist yet")
    # A new property adds a column; a float into the int column widens nothing (the int
    # column's type wins: 4.0 converts); a string that isn't a number goes to rudder_discards.
    send(p, "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "e2",
                          "properties": {"plan": "free", "seats": "many", "referrer": "ad"}})
    send(p, "/v1/track", {"userId": "u1", "event": "Trial Ended", "messageId": "e3",
                          "properties": {"days": 14}})
    wh.wait_count(ns1, "signed_up", 2)
    wh.wait_count(ns1, "trial_ended", 1)
    cols = wh.columns(ns1, "signed_up")
    if cols.get("referrer") != "text" or cols.get("seats") != "bigint":
        h.fail(f"signed_up columns after the new property: {cols}")
    if wh.sql(f"SELECT referrer, seats FROM {ns1}.signed_up WHERE id = 'e2'") != [["ad", ""]]:
        h.fail(f"e2: {wh.sql(f'SELECT referrer, seats FROM {ns1}.signed_up WHERE id = $$e2$$')}")
    disc = wh.sql(f"SELECT table_name, row_id, column_name, column_value FROM "
                  f"{ns1}.rudder_discards ORDER BY table_name")
    if ["signed_up", "e2", "seats", "many"] not in disc:
        h.fail(f"rudder_discards should hold the value that could not convert: {disc}")
    # The other namespace is untouched by the first's evolution.
    if "referrer" in wh.columns(ns2, "signed_up") or "trial_ended" in wh.tables(ns2):
        h.fail("the second namespace changed with the first")
    if wh.sql(f"SELECT id, plan FROM {ns2}.signed_up") != [["o1", "team"]]:
        h.fail(f"{ns2}.signed_up: {wh.sql(f'SELECT id, plan FROM {ns2}.signed_up')}")
    us = uploads(env, p, "--destination", "d-pg2")
    if not us or {u["destinationId"] for u in us} != {"d-pg2"} or us[0]["namespace"] != ns2:
        h.fail(f"uploads --destination d-pg2: {us}")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")


def ids_in(wh, ns, table):
    return [r[0] for r in wh.sql(f'SELECT id FROM "{ns}"."{table}"')]


def case_crash(env):
    wh = Warehouse(env)
    env.write_workspace(config([pg_dest("d-pg", wh, namespace="crash")]))
    h.create_topics(env)
    # Gateway, processor and warehouse as their own processes, so the warehouse can be killed.
    wenv = wh_env(env)
    gw = env.start("gateway", name="gateway")
    pr = env.start("processor", name="processor", **{k: v for k, v in wenv.items()
                                                     if k.startswith("SLUICE_KAFKA")})
    w = env.start("warehouse", name="warehouse-1", **wenv)
    for proc in (gw, pr, w):
        env.wait_healthy(proc)
    n_batches, per = 20, 250
    sent = []
    kills = 0
    t0 = time.time()
    for b in range(n_batches):
        batch = [{"type": "track", "userId": f"u{i % 50}", "event": "Item Viewed",
                  "messageId": f"c-{b}-{i}", "properties": {"i": i, "b": b}}
                 for i in range(per)]
        send(gw, "/v1/batch", {"batch": batch})
        sent += [e["messageId"] for e in batch]
        # Kill the warehouse while an upload is exporting, twice. A load takes milliseconds,
        # so a lock on the event's table holds the next one in exporting_data for a moment.
        if b in (5, 14):
            h.wait_for("the table crash.item_viewed", lambda: "item_viewed" in wh.tables("crash"),
                       30, interval=0.25)
            locker = subprocess.Popen(["psql", wh.dsn, "-X", "-q", "-c",
                                       "BEGIN; LOCK TABLE crash.item_viewed IN ACCESS "
                                       "EXCLUSIVE MODE; SELECT pg_sleep(30)"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=dict(os.environ, PGAPPNAME="e2e-wh-locker"))

            # Events for the next upload, which the lock holds up.
            extra = [{"type": "track", "userId": f"u{i % 50}", "event": "Item Viewed",
                      "messageId": f"c-{b}-x{i}", "properties": {"i": i, "b": b}}
                     for i in range(per)]
            send(gw, "/v1/batch", {"batch": extra})
            sent += [e["messageId"] for e in extra]

            def busy():
                st = h.psql(env.dsn, "SELECT count(*) FROM sluice_wh_uploads WHERE state = "
                            "'exporting_data'")
                return st[0][0] != "0"
            h.wait_for("an upload held in exporting_data by the lock", busy, 25, interval=0.05)
            w.p.send_signal(signal.SIGKILL)
            h.psql(wh.dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                   "application_name = 'e2e-wh-locker'")
            locker.wait(30)
            w.p.wait()
            kills += 1
            state = h.psql(env.dsn, "SELECT id, state FROM sluice_wh_uploads ORDER BY id")
            h.log(f"killed the warehouse (batch {b}, {time.time() - t0:.1f}s); uploads: {state[-3:]}")
            w = env.start("warehouse", name=f"warehouse-{kills + 1}", **wenv)
    env.wait_healthy(w)
    h.log(f"all sent at {time.time() - t0:.1f}s")
    wh.wait_count("crash", "item_viewed", len(sent), timeout=40)
    h.log(f"all loaded at {time.time() - t0:.1f}s")
    wh.wait_count("crash", "tracks", len(sent), timeout=10)
    for t in ("item_viewed", "tracks"):
        ids = ids_in(wh, "crash", t)
        if len(ids) != len(set(ids)) or set(ids) != set(sent):
            h.fail(f"{t}: {len(ids)} rows, {len(set(ids))} distinct, {len(sent)} sent")
    resumed = h.psql(env.dsn, "SELECT id, attempts FROM sluice_wh_uploads WHERE attempts > 1")
    total = h.psql(env.dsn, "SELECT count(*), sum(events) FROM sluice_wh_uploads")[0]
    h.log(f"{kills} kills; {total[0]} uploads of {total[1]} events; resumed after a kill: "
          f"{resumed}")
    if not resumed:
        h.fail("no upload was killed while it ran: the case did not test a resume")
    if w.stop() != 0:
        h.fail("the warehouse did not stop cleanly")


def case_takeover(env):
    wh = Warehouse(env)
    env.write_workspace(config([pg_dest("d-pg", wh, namespace="tk")]))
    h.create_topics(env)
    kafka = {k: v for k, v in wh_env(env).items() if k.startswith("SLUICE_KAFKA")}
    gw = env.start("gateway", name="gateway")
    pr = env.start("processor", name="processor", **kafka)
    ws = {i: env.start("warehouse", name=f"warehouse-{i}",
                       **wh_env(env, SLUICE_WAREHOUSE_INSTANCE_ID=f"e2e-wh-{i}",
                                SLUICE_WAREHOUSE_LEASE="5s"))
          for i in ("a", "b")}
    for proc in [gw, pr] + list(ws.values()):
        env.wait_healthy(proc)
    send(gw, "/v1/track", {"userId": "u0", "event": "Item Viewed", "messageId": "t-0"})
    wh.wait_count("tk", "tracks", 1)
    # Hold tracks locked, so the next upload's load waits inside an instance.
    locker = subprocess.Popen(["psql", wh.dsn, "-X", "-q", "-c",
                               "BEGIN; LOCK TABLE tk.tracks IN ACCESS EXCLUSIVE MODE; "
                               "SELECT pg_sleep(60)"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        h.wait_for("the lock", lambda: wh.one(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE "
            "c.relname = 'tracks' AND l.mode = 'AccessExclusiveLock' AND l.granted") == "1", 10)
        ids = [f"t-{i}" for i in range(1, 201)]
        send(gw, "/v1/batch", {"batch": [{"type": "track", "userId": f"u{i % 7}",
                                          "event": "Item Viewed", "messageId": m}
                                         for i, m in enumerate(ids)]})

        def stuck():
            r = h.psql(env.dsn, "SELECT id, claimed_by FROM sluice_wh_uploads WHERE state = "
                       "'exporting_data' AND claimed_by IS NOT NULL")
            waiting = wh.one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                             "'Lock' AND datname = current_database()")
            return r[0] if r and waiting != "0" else None
        upload, claim = h.wait_for("an upload waiting on the lock", stuck, 20, interval=0.2)
        owner = claim.split("#")[0].rsplit("-", 1)[1]
        other = "b" if owner == "a" else "a"
        h.log(f"upload {upload} is loading in warehouse-{owner} ({claim}); killing it")
        ws[owner].p.send_signal(signal.SIGKILL)
        ws[owner].p.wait()
        killed_at = time.time()
    finally:
        # The server ends the lock's transaction (a killed psql leaves its backend asleep).
        wh.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
               "'%pg_sleep(60)%' AND pid <> pg_backend_pid()")
        locker.kill()
        locker.wait()
    wh.wait_count("tk", "tracks", 201, timeout=25)
    wh.wait_count("tk", "item_viewed", 201, timeout=5)
    took = time.time() - killed_at
    hist = h.psql(env.dsn, f"SELECT state, instance FROM sluice_wh_upload_events WHERE "
                  f"upload_id = {upload} ORDER BY at")
    h.log(f"taken over and loaded {took:.1f}s after the kill; history: {hist}")
    if ["exported_data", f"e2e-wh-{other}#0"] not in hist and \
            ["exported_data", f"e2e-wh-{other}#1"] not in hist:
        h.fail(f"warehouse-{other} should have finished upload {upload}: {hist}")
    for t in ("tracks", "item_viewed"):
        got = ids_in(wh, "tk", t)
        if len(got) != len(set(got)) or set(got) != set(ids + ["t-0"]):
            h.fail(f"{t}: {len(got)} rows, {len(set(got))} distinct, 201 sent")
    if ws[other].stop() != 0:
        h.fail(f"warehouse-{other} did not stop cleanly")


def case_commands(env):
    wh = Warehouse(env)
    good = pg_dest("d-pg", wh, namespace="cmds")
    bad = pg_dest("d-pg", wh, namespace="cmds")
    bad["config"]["database"] = "no_such_database"
    env.write_workspace(config([bad]))
    h.create_topics(env)
    p = env.start("all", **wh_env(env))
    env.wait_healthy(p)
    send(p, "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "k1"})

    def failed_twice():
        us = uploads(env, p)
        return us and us[-1]["attempts"] >= 2 and us[-1]["state"].endswith("_failed")
    h.wait_for("the upload to fail and be retried", failed_twice, 20, interval=0.3)
    u = uploads(env, p)[-1]
    if "no_such_database" not in (u["error"] or ""):
        h.fail(f"the error should name the database: {u}")
    rc, out, _ = sluice(env, p, "warehouse", "uploads")
    if rc != 0 or "exporting_data_failed" not in out or str(u["id"]) not in out:
        h.fail(f"sluice warehouse uploads:\n{out}")
    # Aborted after 3 attempts and 180 minutes since the first: move the first attempt back.
    h.psql(env.dsn, "UPDATE sluice_wh_uploads SET first_attempt_at = now() - interval '4 "
           "hours'")
    h.wait_for("the upload to be aborted",
               lambda: uploads(env, p)[-1]["state"] == "aborted", 15, interval=0.3)
    u = uploads(env, p)[-1]
    if u["attempts"] < 3:
        h.fail(f"aborted before 3 attempts: {u}")
    rc, out, err = sluice(env, p, "warehouse", "retry", str(u["id"]))
    if rc != 0:
        h.fail(f"retry: {rc} {err}")
    # It fails again while the config is wrong; fix it, then retry once more.
    env.write_workspace(config([good]))
    time.sleep(0.6)
    h.wait_for("the retried upload to fail or load",
               lambda: uploads(env, p)[-1]["state"] in ("exporting_data_failed",
                                                         "exported_data", "aborted"), 15, 0.3)
    u = uploads(env, p)[-1]
    if u["state"] != "exported_data":
        h.psql(env.dsn, f"UPDATE sluice_wh_uploads SET next_attempt_at = now() WHERE id = "
               f"{u['id']}")
    h.wait_for("the retried upload to load",
               lambda: uploads(env, p)[-1]["state"] == "exported_data", 15, interval=0.3)
    wh.wait_count("cmds", "signed_up", 1)
    rc, _, err = sluice(env, p, "warehouse", "retry", str(u["id"]))
    if rc != 1 or "exported_data" not in err:
        h.fail(f"retry of an exported upload should refuse: {rc} {err}")
    rc, _, err = sluice(env, p, "warehouse", "retry", "999999")
    if rc != 1 or "no upload" not in err:
        h.fail(f"retry of a missing upload: {rc} {err}")
    hist = h.psql(env.dsn, f"SELECT state FROM sluice_wh_upload_events WHERE upload_id = "
                  f"{u['id']} ORDER BY at")
    states = [r[0] for r in hist]
    h.log("history:", states)
    for s in ("waiting", "generating_load_files", "exporting_data", "exporting_data_failed",
              "aborted", "exported_data"):
        if s not in states:
            h.fail(f"the upload's history lacks {s}: {states}")
    tables = uploads(env, p)[-1]["tables"]
    if not tables or any(t["state"] != "exported_data" for t in tables):
        h.fail(f"table uploads: {tables}")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")


def case_badevents(env):
    """Jobs the warehouse can't load are dead letters (stage "warehouse") that `sluice failed`
    lists and retries, and the good events around them load."""
    wh = Warehouse(env)
    env.write_workspace(config([pg_dest("d-pg", wh, namespace="bad")]))
    h.create_topics(env)
    p = env.start("all", **wh_env(env))
    env.wait_healthy(p)
    job = {"jobId": "bad-1:d-pg", "messageId": "bad-1", "sourceId": "src-1",
           "destinationId": "d-pg", "destinationType": "POSTGRES", "userKey": "u9",
           "receivedAt": "2026-11-26T10:00:00.000Z", "request": {"body": "[1, 2]"}}
    for value in ("not json at all", json.dumps(job)):
        r = subprocess.run(["kcat", "-P", "-b", env.brokers, "-t", env.prefix + "warehouse",
                            "-k", "u9"], input=value, text=True, capture_output=True,
                           timeout=30)
        if r.returncode != 0:
            h.fail(f"kcat: {r.stderr}")
    send(p, "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "good-1"})
    wh.wait_count("bad", "signed_up", 1)

    def dead():
        return h.psql(env.dsn, "SELECT id, coalesce(destination_id, ''), reason, retried_at "
                      "FROM sluice_failed_events WHERE stage = 'warehouse' ORDER BY id")
    h.wait_for("two warehouse dead letters", lambda: len(dead()) >= 2, 20, interval=0.3)
    rows = dead()
    h.log("dead letters:", rows)
    if len(rows) != 2 or "not a JSON job" not in rows[0][2] or rows[1][1] != "d-pg":
        h.fail(f"dead letters: {rows}")
    rc, out, err = sluice(env, p, "failed", "list")
    if rc != 0 or out.count("warehouse") < 2:
        h.fail(f"sluice failed list: {rc}\n{out}{err}")
    # The job is still bad: retried, it comes back as a new dead letter.
    rc, out, err = sluice(env, p, "failed", "retry", "--destination", "d-pg")
    if rc != 0:
        h.fail(f"sluice failed retry: {rc}\n{out}{err}")
    h.wait_for("the retried job to be a dead letter again", lambda: len(dead()) == 3, 20,
               interval=0.3)
    if dead()[1][3] is None or dead()[1][3] == "":
        h.fail(f"the retried dead letter is not marked retried: {dead()}")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")


def lock_tables(wh, tables):
    """A psql session holding tables ACCESS EXCLUSIVE until unlock(); waits for the lock."""
    locker = subprocess.Popen(["psql", wh.dsn, "-X", "-q", "-c",
                               f"BEGIN; LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE "
                               "MODE; SELECT pg_sleep(60)"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    h.wait_for("the locks", lambda: wh.one(
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted AND "
        "relation IS NOT NULL AND locktype = 'relation' AND pid <> pg_backend_pid()") != "0", 10)

    def unlock():
        # The server ends the lock's transaction (a killed psql leaves its backend asleep).
        wh.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
               "'%pg_sleep(60)%' AND pid <> pg_backend_pid()")
        locker.kill()
        locker.wait()
    return unlock


def case_options(env):
    """warehouse.workers, .load_parallelism and .lease: three destinations' uploads are claimed
    at once by workers #0, #1 and #2 with a 3 s lease, and while each upload's first table
    (item_viewed, before tracks by name at equal size) waits on a lock, its tracks loads over a
    second connection."""
    wh = Warehouse(env)
    nss = ["o1", "o2", "o3"]
    env.write_workspace(config([pg_dest(f"d-{n}", wh, namespace=n) for n in nss]))
    h.create_topics(env)
    p = env.start("all", **wh_env(env, SLUICE_WAREHOUSE_WORKERS="3",
                                  SLUICE_WAREHOUSE_LOAD_PARALLELISM="2",
                                  SLUICE_WAREHOUSE_LEASE="3s"))
    env.wait_healthy(p)
    send(p, "/v1/track", {"userId": "u0", "event": "Item Viewed", "messageId": "o-0"})
    for n in nss:
        wh.wait_count(n, "item_viewed", 1)
    wait_uploads_settled(env, p)
    unlock = lock_tables(wh, [f"{n}.item_viewed" for n in nss])
    try:
        send(p, "/v1/track", {"userId": "u1", "event": "Item Viewed", "messageId": "o-1"})
        for n in nss:  # tracks loads beside the blocked item_viewed
            wh.wait_count(n, "tracks", 2, timeout=20)

        def held():
            r = h.psql(env.dsn, "SELECT u.claimed_by, extract(epoch FROM u.claimed_until - "
                       "now()), t.state FROM sluice_wh_uploads u JOIN sluice_wh_table_uploads "
                       "t ON t.upload_id = u.id AND t.table_name = 'tracks' WHERE u.state = "
                       "'exporting_data' AND u.claimed_by IS NOT NULL")
            return r if len(r) == 3 else None
        rows = h.wait_for("three uploads claimed at once", held, 20, interval=0.2)
        h.log("claims:", rows)
        claims = sorted(r[0] for r in rows)
        if claims != [f"e2e-wh-1#{i}" for i in range(3)]:
            h.fail(f"three workers should hold the uploads: {claims}")
        if any(float(r[1]) > 3.5 for r in rows):
            h.fail(f"the claims should last warehouse.lease (3 s): {rows}")
        if any(r[2] != "exported_data" for r in rows):
            h.fail(f"tracks should be loaded while item_viewed waits: {rows}")
        # (reading item_viewed would wait on the lock too)
        waiting = h.psql(env.dsn, "SELECT t.state FROM sluice_wh_uploads u JOIN "
                         "sluice_wh_table_uploads t ON t.upload_id = u.id AND t.table_name = "
                         "'item_viewed' WHERE u.state = 'exporting_data'")
        if [r[0] for r in waiting] != ["exporting_data"] * 3:
            h.fail(f"item_viewed should be loading in each upload: {waiting}")
    finally:
        unlock()
    for n in nss:
        wh.wait_count(n, "item_viewed", 2)
    wait_uploads_settled(env, p)
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")


def case_orphans(env):
    """Staging directories of a crashed flush (no upload recorded with their id) are removed at
    start once a minute old (younger, another instance may be writing them); so is the one of
    an upload exported before its files were removed."""
    wh = Warehouse(env)
    env.write_workspace(config([pg_dest("d-pg", wh, namespace="orph")]))
    h.create_topics(env)
    staging = os.path.join(env.workdir, "staging")

    def make_dir(upload_id, age_s):
        d = os.path.join(staging, "d-pg", str(upload_id))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tracks.avro"), "wb") as f:
            f.write(b"Obj\x01 left by a crash")
        t = time.time() - age_s
        os.utime(d, (t, t))
        return d
    old, fresh = make_dir(900000001, 3600), make_dir(900000002, 0)

    def restart_and_check(gone, why):
        p = env.start("all", **wh_env(env))
        env.wait_healthy(p)
        if os.path.exists(gone):
            h.fail(f"the staging directory {gone} ({why}) is still there")
        if not os.path.exists(fresh):
            h.fail(f"the staging directory {fresh}, a minute old at most, was removed")
        return p
    p = restart_and_check(old, "of no upload, an hour old")
    send(p, "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "or-1"})
    wh.wait_count("orph", "signed_up", 1)
    wait_uploads_settled(env, p)
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")
    done = make_dir(uploads(env, p)[0]["id"], 0)  # exported, its files not removed
    p = restart_and_check(done, "of an exported upload")
    if wh.count("orph", "signed_up") != 1:
        h.fail("rows changed")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")

def case_bytecap(env):
    """warehouse.max_buffered_bytes (64 KB here) with an hour's sync: the busy destination's
    rows are written early, in uploads of a few dozen events, while the quiet destination of
    another source (its buffer the smaller) waits for its sync; after a stop (which writes what
    is buffered) and a restart, every event is in each destination's tables exactly once."""
    wh = Warehouse(env)
    calm = {"id": "src-calm", "name": "Calm", "writeKey": "calm-key", "enabled": True,
            "sourceDefinition": {"name": "HTTP", "category": "eventStream"},
            "destinations": [pg_dest("d-calm", wh, namespace="calm")]}
    env.write_workspace(config([pg_dest("d-busy", wh, namespace="busy")], [calm]))
    h.create_topics(env)
    wenv = wh_env(env, SLUICE_WAREHOUSE_SYNC_INTERVAL="1h",
                  SLUICE_WAREHOUSE_MAX_BUFFERED_BYTES="64KB")
    p = env.start("all", **wenv)
    env.wait_healthy(p)
    calm_ids = [f"calm-{i}" for i in range(3)]
    for m in calm_ids:
        send(p, "/v1/track", {"userId": "c1", "event": "Item Viewed", "messageId": m}, "calm-key")
    sent, note = [], "x" * 400
    for b in range(10):
        batch = [{"type": "track", "userId": f"u{i % 20}", "event": "Item Viewed",
                  "messageId": f"b-{b}-{i}", "properties": {"i": i, "note": note}}
                 for i in range(100)]
        send(p, "/v1/batch", {"batch": batch})
        sent += [e["messageId"] for e in batch]
    # The rows of the last events (less than the cap) wait for the sync: most are loaded.
    h.wait_for("most busy events loaded", lambda: "item_viewed" in wh.tables("busy") and
               wh.count("busy", "item_viewed") >= len(sent) * 8 // 10, 40, interval=0.3)
    us = uploads(env, p)
    busy = [u for u in us if u["destinationId"] == "d-busy"]
    h.log(f"{len(busy)} uploads of d-busy, events {sorted(u['events'] for u in busy)}; "
          f"of d-calm: {[u for u in us if u['destinationId'] == 'd-calm']}")
    if len(busy) < 5 or max(u["events"] for u in busy) > 200:
        h.fail(f"d-busy should sync early in small uploads: {len(busy)} uploads")
    if any(u["destinationId"] == "d-calm" for u in us):
        h.fail("d-calm, the smaller buffer, was written before its sync")
    held = metric(p, "sluice_warehouse_buffered_bytes")
    if not 0 < held < 65536:
        h.fail(f"sluice_warehouse_buffered_bytes is {held}, not under the cap")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")
    p = env.start("all", **wenv)
    env.wait_healthy(p)
    wh.wait_count("busy", "item_viewed", len(sent), timeout=40)
    wh.wait_count("busy", "tracks", len(sent), timeout=10)
    wh.wait_count("calm", "item_viewed", len(calm_ids), timeout=10)
    for ns, table, want in (("busy", "item_viewed", sent), ("busy", "tracks", sent),
                            ("calm", "item_viewed", calm_ids)):
        ids = ids_in(wh, ns, table)
        if len(ids) != len(set(ids)) or set(ids) != set(want):
            h.fail(f"{ns}.{table}: {len(ids)} rows, {len(set(ids))} distinct, {len(want)} sent")
    if p.stop() != 0:
        h.fail("sluice all did not stop cleanly")


CASES = {"types": case_types, "evolve": case_evolve, "crash": case_crash,
         "takeover": case_takeover, "commands": case_commands, "badevents": case_badevents,
         "options": case_options, "orphans": case_orphans, "bytecap": case_bytecap}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    a = ap.parse_args()
    h.run(CASES[a.case], "wh-" + a.case)
