"""The workspace config as users run it: served by a control plane over HTTP (polled with
conditional GET), reloaded on SIGHUP, and taken from Postgres' last good copy when the file is
broken at start. Each change must apply to new events without a restart.

Usage: test_workspace_config.py --case url|sighup|lastgood
"""
import argparse
import hashlib
import http.server
import json
import signal
import threading

import harness as h


def header_of(sink, mid, name):
    for r in sink.requests():
        if mid in r["body"]:
            return {k.lower(): v for k, v in r["headers"].items()}.get(name.lower())
    return None


def send(p, mid):
    status, body, _ = h.http("POST", p.url + "/v1/track", h.track("u1", messageId=mid),
                             write_key="e2e-write-key")
    assert status == 200, (status, body)


def config_with_header(sink, value):
    cfg = h.workspace_config(sink.url)
    cfg["sources"][0]["destinations"][0]["config"]["headers"] = [{"from": "X-Test", "to": value}]
    return cfg


class ControlPlane:
    """Serves one workspace config with an ETag and answers If-None-Match with 304."""

    def __init__(self, cfg):
        self.set(cfg)
        self.full = self.not_modified = 0
        cp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.headers.get("If-None-Match") == cp.etag:
                    cp.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                cp.full += 1
                self.send_response(200)
                self.send_header("ETag", cp.etag)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(cp.body)))
                self.end_headers()
                self.wfile.write(cp.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/workspaceConfig.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, cfg):
        self.body = json.dumps(cfg).encode()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


def case_url(env):
    sink = h.Sink(env)
    cp = ControlPlane(config_with_header(sink, "v1"))
    p = env.start("all", SLUICE_KAFKA_BROKERS="", SLUICE_WORKSPACE_CONFIG=cp.url)
    env.wait_healthy(p)
    send(p, "url-1")
    h.wait_for("url-1 at the sink", lambda: header_of(sink, "url-1", "X-Test"), timeout=60)
    assert header_of(sink, "url-1", "X-Test") == "v1"
    h.wait_for("conditional GETs answered 304", lambda: cp.not_modified >= 3, timeout=30)
    full_before = cp.full
    cp.set(config_with_header(sink, "v2"))  # the control plane publishes a new version
    h.wait_for("the new version fetched", lambda: cp.full > full_before, timeout=30)
    def new_version_used():
        send(p, "url-probe")  # the same messageId each time: counted once below
        return any("url-probe" in r["body"] and
                   {k.lower(): v for k, v in r["headers"].items()}.get("x-test") == "v2"
                   for r in sink.requests())
    h.wait_for("the new version in use", new_version_used, timeout=30, interval=0.5)
    h.log(f"control plane: {cp.full} full responses, {cp.not_modified} answered 304")
    assert p.stop() == 0
    cp.server.shutdown()


def case_sighup(env):
    sink = h.Sink(env)
    env.write_workspace(config_with_header(sink, "v1"))
    # A long poll interval: only SIGHUP can make the change visible within the test.
    p = env.start("all", SLUICE_KAFKA_BROKERS="", SLUICE_WORKSPACE_POLL_INTERVAL="1h")
    env.wait_healthy(p)
    send(p, "hup-1")
    h.wait_for("hup-1 at the sink", lambda: header_of(sink, "hup-1", "X-Test"), timeout=60)
    env.write_workspace(config_with_header(sink, "v2"))
    p.signal(signal.SIGHUP)
    h.wait_for("the reload logged", lambda: p.output().count("using workspace config") >= 2,
               timeout=30)
    send(p, "hup-2")
    h.wait_for("hup-2 at the sink", lambda: header_of(sink, "hup-2", "X-Test"), timeout=60)
    assert header_of(sink, "hup-2", "X-Test") == "v2", header_of(sink, "hup-2", "X-Test")
    assert p.stop() == 0


def case_lastgood(env):
    sink = h.Sink(env)
    env.write_workspace(h.workspace_config(sink.url))
    p = env.start("all", SLUICE_KAFKA_BROKERS="")
    env.wait_healthy(p)
    h.wait_for("the last good config saved in postgres", lambda: h.psql(
        env.dsn, "SELECT version FROM sluice_workspace_config"), timeout=30)
    assert p.stop() == 0
    env.write_workspace("{ this is not json")  # broken while sluice was down
    p2 = env.start("all", name="all-restarted", SLUICE_KAFKA_BROKERS="")
    h.wait_for("/health to answer", lambda: h.http("GET", p2.url + "/health")[0] != 0,
               timeout=30)
    status, body, _ = h.http("GET", p2.url + "/health")
    detail = json.loads(body)["checks"]["workspace"]["detail"]
    h.log(f"/health says: {detail}")
    assert status == 503 and "last good version" in detail, (status, body)
    send(p2, "from-last-good")  # the role runs on the saved config meanwhile
    h.wait_for("the event at the sink", lambda: "from-last-good" in sink.message_ids(),
               timeout=60)
    assert p2.stop() == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["url", "sighup", "lastgood"], required=True)
    args = ap.parse_args()
    h.run(globals()["case_" + args.case], f"wsconfig-{args.case}", kafka="embedded")


if __name__ == "__main__":
    main()
