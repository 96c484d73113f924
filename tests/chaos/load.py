"""Steady load for the fault harness: threads posting /v1/track and /v1/batch to the gateway.

Each thread owns its users, so a user's events are sent by one thread, one request at a time,
with a per-user sequence number in properties.seq (1, 2, 3, ...). A request that does not get
a 200 is sent again unchanged (same messageIds), as an SDK does, until it gets one or the run
is over; the next events of its users wait for it. So the order of a user's sequence numbers is
the order the gateway acknowledged them, and every acknowledged event has exactly one seq.
"""
import base64
import http.client
import json
import random
import threading
import time


class Load:
    def __init__(self, host, port, write_key, run_id, rate, threads=4, users_per_thread=25,
                 event="Chaos Event"):
        self.host, self.port = host, port
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.run_id = run_id
        self.rate = rate
        self.nthreads = threads
        self.users_per_thread = users_per_thread
        self.event = event
        self.stop_sending = threading.Event()  # no new requests
        self.give_up_at = None  # retries of unacknowledged requests stop at this time
        self.lock = threading.Lock()
        self.acked = {}  # messageId -> (user, seq, ack time)
        self.attempts = {}  # messageId -> times sent (more than 1: the client resent it)
        self.unacked = {}  # messageId -> (user, seq): sent, never acknowledged
        self.by_status = {}  # HTTP status (0: no answer) -> requests
        self.rejected = []  # 4xx other than 429: a bug in the harness or the gateway
        self.requests = 0
        self.threads = []

    # -- sending --

    def _conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=20)

    def _post(self, conn, path, body):
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json",
                                              "Authorization": self.auth})
            r = conn.getresponse()
            data = r.read()
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
            return r.status, data
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            return 0, str(e).encode()

    def _worker(self, t):
        rnd = random.Random(f"{self.run_id}-{t}")
        users = [f"u{t:02d}-{k:03d}" for k in range(self.users_per_thread)]
        seq = {u: 0 for u in users}
        conn = self._conn()
        per_thread = self.rate / self.nthreads
        due = time.monotonic()
        while not self.stop_sending.is_set():
            if rnd.random() < 0.5:
                path, n = "/v1/track", 1
            else:
                path, n = "/v1/batch", rnd.randint(2, 10)
            events = []
            for _ in range(n):
                u = rnd.choice(users)
                seq[u] += 1
                mid = f"{self.run_id}-{u}-{seq[u]}"
                events.append({"type": "track", "userId": u, "event": self.event,
                               "messageId": mid,
                               "properties": {"seq": seq[u], "thread": t, "pad": "x" * 64}})
            body = json.dumps(events[0] if n == 1 else {"batch": events}).encode()
            mids = [(e["messageId"], e["userId"], e["properties"]["seq"]) for e in events]
            backoff = 0.1
            while True:
                with self.lock:
                    for m, _, _ in mids:
                        self.attempts[m] = self.attempts.get(m, 0) + 1
                status, data = self._post(conn, path, body)
                now = time.time()
                with self.lock:
                    self.requests += 1
                    self.by_status[status] = self.by_status.get(status, 0) + 1
                    if status == 200:
                        for m, u, s in mids:
                            self.acked[m] = (u, s, now)
                    elif 400 <= status < 500 and status != 429:
                        self.rejected.append((status, data[:300].decode(errors="replace")))
                if status == 200 or (400 <= status < 500 and status != 429):
                    break
                if self.give_up_at is not None and time.time() > self.give_up_at:
                    break
                if status == 0:
                    conn = self._conn()
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            if status != 200:
                with self.lock:
                    for m, u, s in mids:
                        self.unacked[m] = (u, s)
            due += n / per_thread
            now = time.monotonic()
            if due < now - 1.0:  # after a stall, don't burst more than a second's worth
                due = now - 1.0
            if due > now:
                time.sleep(due - now)
        conn.close()

    def start(self):
        for t in range(self.nthreads):
            th = threading.Thread(target=self._worker, args=(t,), daemon=True)
            th.start()
            self.threads.append(th)

    def stop(self, grace=30.0):
        """No new requests; requests not yet acknowledged are retried for up to grace s."""
        self.give_up_at = time.time() + grace
        self.stop_sending.set()
        for th in self.threads:
            th.join(grace + 30)

    def snapshot(self):
        with self.lock:
            return len(self.acked), self.requests

    def client_resent(self):
        """messageIds the client sent more than once (a request without a 200 sent again)."""
        with self.lock:
            return {m for m, n in self.attempts.items() if n > 1}
