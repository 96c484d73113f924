/*
 * sluice-loadgen: a small HTTP/1.1 load generator for the gateway benchmark (tests/bench/run).
 * One thread, epoll, non-blocking keep-alive connections, one request in flight per connection.
 *
 *   sluice-loadgen --url http://127.0.0.1:8080/v1/batch --connections 8 --duration 15
 *                  [--rate R] [--warmup S] [--body FILE | --bodies FILE] [--header 'N: v']...
 *                  [--timeout S] [--drain S] [--stamp] [--unacked FILE]
 *
 * With --rate 0 (the default) it runs closed loop: each connection sends its next request as
 * soon as the previous answer is in, and latency is measured from the send. With --rate R it
 * runs open loop: request i is due at start + i/R whatever happens to earlier requests, and its
 * latency is measured from that scheduled time, so a stalled server is not hidden by the load
 * generator waiting for it (coordinated omission). Latencies go into a log-linear histogram of
 * microseconds (under 1% error); no sample is stored.
 *
 * Prints one JSON line on stdout when done:
 *   {"requests":..,"ok":..,"non2xx":..,"errors":..,"seconds":..,"rps":..,
 *    "p50_ms":..,"p90_ms":..,"p99_ms":..,"max_ms":..,...}
 * `requests` counts answers received for requests started in the measured window (after the
 * warmup); `ok` the 2xx ones. `total_ok` counts every 2xx, warmup included, and `unfinished`
 * the requests of the window still unanswered (in flight or, open loop, not yet sent) at the end;
 * `loadgen_cpu_pct` is this process's own CPU use (near 100: it is the bottleneck).
 * --drain S: after the window no request is started, but the answers to those in flight are
 * waited for, S seconds at most (they count in `requests`, `ok` and the latencies).
 *
 * --stamp (the end-to-end benchmark, tests/bench/e2e): every occurrence in a body of the 36
 * characters STAMP_PLACEHOLDER (gen_events.py --stamp puts it in each event's messageId) is
 * replaced, in each request as it is started, by "e2e-<seq>-<ns>": seq (12 digits) numbers the
 * stamped events of the run from 0, each once; ns (19 digits) is the request's start in
 * CLOCK_MONOTONIC nanoseconds: its scheduled send time open loop, its send time closed loop (the
 * same start its latency is measured from). A receiver on the machine reads when each event was
 * sent from its messageId. `stamped` in the JSON counts the numbers given out; --unacked FILE
 * lists the ones whose request got no 2xx (non-2xx, error, timeout or still unanswered at the
 * end), one request a line: "FIRST COUNT". Every other number was answered 2xx.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S  1000000000LL
#define NS_PER_MS 1000000LL
#define NS_PER_US 1000LL

#define STAMP_PLACEHOLDER "e2e-SSSSSSSSSSSS-TTTTTTTTTTTTTTTTTTT"
#define STAMP_LEN         36

/* ---- latency histogram: log-linear, 128 linear sub-buckets per power of two ---- */

#define HIST_SUB_BITS 7
#define HIST_SUB      (1 << HIST_SUB_BITS)
#define HIST_SLOTS    (64 * HIST_SUB)

typedef struct {
    uint64_t counts[HIST_SLOTS];
    uint64_t total;
    uint64_t max_us;
} hist_t;

static int hist_index(uint64_t us)
{
    if (us < HIST_SUB)
        return (int)us;
    int msb = 63 - __builtin_clzll(us);
    int shift = msb - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + (int)((us >> shift) - HIST_SUB);
}

/* The middle of the values that map to slot idx. */
static double hist_value(int idx)
{
    if (idx < HIST_SUB)
        return idx;
    int shift = idx / HIST_SUB - 1;
    uint64_t lo = (uint64_t)(idx % HIST_SUB + HIST_SUB) << shift;
    return (double)lo + (double)((1ULL << shift) - 1) / 2.0;
}

static void hist_record(hist_t *h, int64_t ns)
{
    uint64_t us = ns > 0 ? (uint64_t)(ns / NS_PER_US) : 0;
    h->counts[hist_index(us)]++;
    h->total++;
    if (us > h->max_us)
        h->max_us = us;
}

/* The p-th quantile (0..1) in microseconds. */
static double hist_quantile(const hist_t *h, double p)
{
    if (!h->total)
        return 0;
    uint64_t want = (uint64_t)(p * (double)h->total + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_SLOTS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            double v = hist_value(i);
            return v > (double)h->max_us ? (double)h->max_us : v;
        }
    }
    return (double)h->max_us;
}

/* ---- connections ---- */

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_SENDING, C_READING, C_BACKOFF };

typedef struct conn {
    int fd;
    uint32_t idx, gen; /* epoll data: idx << 32 | gen, so stale events of a closed fd are ignored */
    enum conn_state state;
    bool want_out;   /* EPOLLOUT currently registered */
    const char *req; /* the request being sent (not owned) */
    size_t req_len, req_off;
    int64_t start_ns; /* send time (closed loop) or scheduled time (open loop) */
    bool has_request; /* a request is assigned (maybe waiting for the connection) */
    int64_t retry_at; /* C_BACKOFF: when to reconnect */
    char *rbuf;
    size_t rlen, rcap;
    struct conn *next_idle;
    char *own; /* --stamp: this connection's stamped copy of the request */
    size_t own_cap;
    uint64_t seq_first, seq_n; /* --stamp: the stamp numbers of the request */
} conn_t;

typedef struct {
    char *data;
    size_t len;
    size_t *stamps; /* --stamp: offsets of the placeholders */
    size_t nstamps;
} req_t;

static struct {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    req_t *reqs;
    size_t nreqs, next_req;
    int epfd;
    double rate;
    int64_t interval_ns;
    int64_t next_due; /* open loop: scheduled time of the next request */
    int64_t window_start, window_end;
    int64_t timeout_ns;
    conn_t *idle; /* open loop: connections free for a request */
    hist_t hist;
    uint64_t ok, non2xx, errors, total_ok, total_answers;
    bool first_non2xx_shown, first_error_shown;
    bool stamp;
    uint64_t next_seq;
    FILE *unacked;
} g;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "sluice-loadgen: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fputs("sluice-loadgen: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("could not open \"%s\"", path);
    size_t cap = 1 << 16, n = 0;
    char *buf = xrealloc(NULL, cap);
    for (;;) {
        if (n == cap)
            buf = xrealloc(buf, cap *= 2);
        size_t r = fread(buf + n, 1, cap - n, f);
        if (!r)
            break;
        n += r;
    }
    fclose(f);
    buf = xrealloc(buf, n + 1);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static uint64_t ep_data(const conn_t *c)
{
    return (uint64_t)c->idx << 32 | c->gen;
}

static void ep_set(conn_t *c, bool out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u64 = ep_data(c)};
    if (c->want_out == out)
        return;
    c->want_out = out;
    epoll_ctl(g.epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static bool any_in_flight(const conn_t *conns, int n)
{
    for (int i = 0; i < n; i++)
        if (conns[i].has_request)
            return true;
    return false;
}

static bool in_window(int64_t start)
{
    return start >= g.window_start && start < g.window_end;
}

static void conn_connect(conn_t *c);
static void conn_send(conn_t *c);

/* --unacked: the stamp numbers of a request that got no 2xx. */
static void note_unacked(const conn_t *c)
{
    if (g.unacked && c->seq_n)
        fprintf(g.unacked, "%llu %llu\n", (unsigned long long)c->seq_first,
                (unsigned long long)c->seq_n);
}
static void conn_begin(conn_t *c, int64_t start);

static void conn_close(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g.epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->rlen = 0;
    c->want_out = false;
    c->state = C_DOWN;
}

/* A request failed (connect, reset, bad answer, timeout): count it, reconnect after backoff. */
static void conn_fail(conn_t *c, const char *what, int err)
{
    int64_t now = now_ns();
    if (c->has_request ? in_window(c->start_ns) : in_window(now))
        g.errors++; /* a failed request, or a failed connect before one could be sent */
    if (c->has_request)
        note_unacked(c);
    c->has_request = false;
    if (!g.first_error_shown) {
        g.first_error_shown = true;
        fprintf(stderr, "sluice-loadgen: first error: %s%s%s\n", what, err ? ": " : "",
                err ? strerror(err) : "");
    }
    conn_close(c);
    c->state = C_BACKOFF;
    c->retry_at = now + 20 * NS_PER_MS;
}

static void conn_connect(conn_t *c)
{
    int fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_fail(c, "socket", errno);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->gen++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = ep_data(c)};
    epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev);
    c->want_out = true;
    c->state = C_CONNECTING;
    if (connect(fd, (struct sockaddr *)&g.addr, g.addrlen) < 0 && errno != EINPROGRESS) {
        conn_fail(c, "connect", errno);
        return;
    }
}

/* The connection is ready for a request: take the next one (closed loop) or join the idle list
 * (open loop, where the scheduler hands out requests). */
static void conn_ready(conn_t *c, int64_t now)
{
    c->state = C_IDLE;
    ep_set(c, false);
    if (c->has_request) {
        conn_send(c);
        return;
    }
    if (now >= g.window_end)
        return;
    if (g.rate > 0) {
        c->next_idle = g.idle;
        g.idle = c;
        return;
    }
    conn_begin(c, now);
}

/* Assigns a request that counts from `start` and sends it (or connects first). */
static void conn_begin(conn_t *c, int64_t start)
{
    req_t *r = &g.reqs[g.next_req];
    g.next_req = (g.next_req + 1) % g.nreqs;
    c->req = r->data;
    c->req_len = r->len;
    c->seq_n = 0;
    if (g.stamp && r->nstamps) {
        /* A copy of its own: the same body may be in flight on another connection. */
        if (c->own_cap < r->len + 1)
            c->own = xrealloc(c->own, c->own_cap = r->len + 1);
        memcpy(c->own, r->data, r->len);
        c->seq_first = g.next_seq;
        c->seq_n = r->nstamps;
        for (size_t i = 0; i < r->nstamps; i++) {
            char s[STAMP_LEN + 1];
            snprintf(s, sizeof(s), "e2e-%012llu-%019lld",
                     (unsigned long long)(g.next_seq++ % 1000000000000ULL), (long long)start);
            memcpy(c->own + r->stamps[i], s, STAMP_LEN);
        }
        c->req = c->own;
    }
    c->req_off = 0;
    c->start_ns = start;
    c->has_request = true;
    if (c->state == C_IDLE)
        conn_send(c);
    else if (c->state == C_DOWN)
        conn_connect(c);
}

static void conn_send(conn_t *c)
{
    c->state = C_SENDING;
    while (c->req_off < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ep_set(c, true);
                return;
            }
            conn_fail(c, "send", errno);
            return;
        }
        c->req_off += (size_t)n;
    }
    ep_set(c, false);
    c->state = C_READING;
}

/* Finds header `name` in [h, end) and returns its value (not terminated), or NULL. */
static const char *find_header(const char *h, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    while (h < end) {
        const char *eol = memmem(h, (size_t)(end - h), "\r\n", 2);
        if (!eol)
            eol = end;
        if ((size_t)(eol - h) > nl && h[nl] == ':' && strncasecmp(h, name, nl) == 0) {
            const char *v = h + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            *vlen = (size_t)(eol - v);
            return v;
        }
        h = eol + 2;
    }
    return NULL;
}

/* Tries to parse a complete answer from the read buffer. Returns 1 when one is complete, 0 when
 * more bytes are needed, -1 on a malformed answer. `eof` says the peer has closed. */
static int conn_parse(conn_t *c, bool eof, int *status, bool *close_after)
{
    const char *b = c->rbuf;
    const char *hend = c->rlen >= 4 ? memmem(b, c->rlen, "\r\n\r\n", 4) : NULL;
    if (!hend)
        return eof || c->rlen > 65536 ? -1 : 0;
    if (c->rlen < 12 || strncmp(b, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(b + 9);
    if (*status < 100 || *status > 999)
        return -1;
    const char *hs = memmem(b, (size_t)(hend - b), "\r\n", 2) + 2;
    size_t vlen;
    const char *v = find_header(hs, hend + 2, "Connection", &vlen);
    bool http10 = b[7] == '0';
    *close_after = http10 ? !(v && vlen >= 10 && strncasecmp(v, "keep-alive", 10) == 0)
                          : (v && vlen >= 5 && strncasecmp(v, "close", 5) == 0);
    size_t head = (size_t)(hend - b) + 4;
    if (*status < 200 || *status == 204 || *status == 304) {
        if (*status < 200) { /* 100 Continue and friends: drop and wait for the real answer */
            memmove(c->rbuf, c->rbuf + head, c->rlen - head);
            c->rlen -= head;
            return conn_parse(c, eof, status, close_after);
        }
        return 1;
    }
    v = find_header(hs, hend + 2, "Content-Length", &vlen);
    if (v) {
        size_t body = strtoull(v, NULL, 10);
        if (c->rlen - head >= body)
            return 1;
        return eof ? -1 : 0;
    }
    if (find_header(hs, hend + 2, "Transfer-Encoding", &vlen))
        return -1; /* chunked answers are not supported */
    *close_after = true;
    return eof ? 1 : 0; /* the body runs to the end of the connection */
}

static void conn_read(conn_t *c, int64_t now)
{
    bool eof = false;
    for (;;) {
        if (c->rcap - c->rlen < 4096)
            c->rbuf = xrealloc(c->rbuf, c->rcap = c->rcap ? c->rcap * 2 : 16384);
        size_t room = c->rcap - c->rlen;
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, room, 0);
        if (n > 0) {
            c->rlen += (size_t)n;
            if ((size_t)n < room)
                break; /* short read: the socket is drained */
            continue;
        }
        if (n == 0) {
            eof = true;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        conn_fail(c, "recv", errno);
        return;
    }
    if (!c->has_request || (c->state != C_READING && c->state != C_SENDING)) {
        /* Bytes or a close while nothing is outstanding: the server closed an idle connection. */
        if (eof) {
            bool was_idle = c->state == C_IDLE;
            conn_close(c);
            if (was_idle && g.rate > 0) {
                /* It stays on the idle list; conn_begin reconnects it when it gets a request. */
                return;
            }
            if (now < g.window_end && !c->has_request && g.rate <= 0)
                conn_begin(c, now);
        }
        c->rlen = 0;
        return;
    }
    int status = 0;
    bool close_after = false;
    int rc = conn_parse(c, eof, &status, &close_after);
    if (rc < 0) {
        conn_fail(c, eof ? "connection closed before a complete answer" : "malformed answer", 0);
        return;
    }
    if (rc == 0)
        return;
    if (c->state == C_SENDING)
        close_after = true; /* answered before the whole request was sent: out of step */
    bool is_ok = status >= 200 && status < 300;
    g.total_answers++;
    if (is_ok)
        g.total_ok++;
    if (in_window(c->start_ns)) {
        hist_record(&g.hist, now - c->start_ns);
        if (is_ok)
            g.ok++;
        else
            g.non2xx++;
    }
    if (!is_ok)
        note_unacked(c);
    if (!is_ok && !g.first_non2xx_shown) {
        g.first_non2xx_shown = true;
        size_t show = c->rlen < 300 ? c->rlen : 300;
        fprintf(stderr, "sluice-loadgen: first non-2xx answer: %.*s\n", (int)show, c->rbuf);
    }
    c->has_request = false;
    c->rlen = 0;
    if (close_after || eof) {
        conn_close(c);
        if (now < g.window_end) {
            if (g.rate > 0) {
                c->next_idle = g.idle;
                g.idle = c;
            } else {
                conn_begin(c, now);
            }
        }
        return;
    }
    conn_ready(c, now);
}

static void on_event(conn_t *c, uint32_t ev, int64_t now)
{
    if (c->state == C_CONNECTING) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_fail(c, "connect", err);
            return;
        }
        conn_ready(c, now);
        return;
    }
    if (c->state == C_SENDING && (ev & EPOLLOUT)) {
        conn_send(c);
        if (c->fd < 0)
            return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
        conn_read(c, now);
}

/* Builds one complete request (request line, headers, body) for every body. */
static void build_requests(const char *host, const char *path, char **headers, int nheaders,
                           const char *body_file, const char *bodies_file)
{
    char *text = NULL;
    size_t text_len = 0;
    const char **bodies = NULL;
    size_t *lens = NULL, n = 0;
    if (body_file || bodies_file) {
        text = read_file(body_file ? body_file : bodies_file, &text_len);
        if (body_file) {
            bodies = xrealloc(NULL, sizeof(*bodies));
            lens = xrealloc(NULL, sizeof(*lens));
            bodies[0] = text;
            lens[0] = text_len;
            n = 1;
        } else {
            size_t cap = 0;
            for (char *p = text, *end = text + text_len; p < end;) {
                char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
                if (l && p[l - 1] == '\r')
                    l--;
                if (l) {
                    if (n == cap) {
                        cap = cap ? cap * 2 : 1024;
                        bodies = xrealloc(bodies, cap * sizeof(*bodies));
                        lens = xrealloc(lens, cap * sizeof(*lens));
                    }
                    bodies[n] = p;
                    lens[n++] = l;
                }
                p = nl ? nl + 1 : end;
            }
            if (!n)
                die("\"%s\" has no bodies", bodies_file);
        }
    }
    size_t hlen = 0;
    for (int i = 0; i < nheaders; i++)
        hlen += strlen(headers[i]) + 2;
    g.nreqs = n ? n : 1;
    g.reqs = xrealloc(NULL, g.nreqs * sizeof(*g.reqs));
    for (size_t i = 0; i < g.nreqs; i++) {
        size_t blen = n ? lens[i] : 0;
        size_t cap = strlen(path) + strlen(host) + hlen + blen + 128;
        char *r = xrealloc(NULL, cap);
        int k = snprintf(r, cap, "%s %s HTTP/1.1\r\nHost: %s\r\n", n ? "POST" : "GET", path, host);
        for (int j = 0; j < nheaders; j++)
            k += snprintf(r + k, cap - (size_t)k, "%s\r\n", headers[j]);
        if (n)
            k += snprintf(r + k, cap - (size_t)k, "Content-Length: %zu\r\n", blen);
        k += snprintf(r + k, cap - (size_t)k, "\r\n");
        if (blen)
            memcpy(r + k, bodies[i], blen);
        g.reqs[i].data = r;
        g.reqs[i].len = (size_t)k + blen;
        g.reqs[i].stamps = NULL;
        g.reqs[i].nstamps = 0;
        for (size_t off = (size_t)k; g.stamp && off + STAMP_LEN <= g.reqs[i].len;) {
            char *at = memmem(r + off, g.reqs[i].len - off, STAMP_PLACEHOLDER, STAMP_LEN);
            if (!at)
                break;
            g.reqs[i].stamps = xrealloc(g.reqs[i].stamps, (g.reqs[i].nstamps + 1) * sizeof(size_t));
            g.reqs[i].stamps[g.reqs[i].nstamps++] = (size_t)(at - r);
            off = (size_t)(at - r) + STAMP_LEN;
        }
    }
    free(bodies);
    free(lens);
    free(text);
}

static void parse_url(const char *url, char *host, size_t hostcap, char *hostport, size_t hpcap,
                      const char **path)
{
    if (strncmp(url, "http://", 7) != 0)
        die("--url must start with http:// (got \"%s\")", url);
    const char *h = url + 7;
    const char *slash = strchr(h, '/');
    *path = slash ? slash : "/";
    size_t hplen = slash ? (size_t)(slash - h) : strlen(h);
    if (hplen == 0 || hplen >= hpcap)
        die("bad host in --url \"%s\"", url);
    memcpy(hostport, h, hplen);
    hostport[hplen] = '\0';
    const char *port = "80";
    char *colon = strrchr(hostport, ':');
    size_t hlen = colon ? (size_t)(colon - hostport) : hplen;
    if (colon)
        port = colon + 1;
    if (hlen >= hostcap)
        die("bad host in --url \"%s\"", url);
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0 || !ai)
        die("could not resolve \"%s\"", hostport);
    memcpy(&g.addr, ai->ai_addr, ai->ai_addrlen);
    g.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
}

static void usage(void)
{
    fputs("usage: sluice-loadgen --url http://HOST:PORT/PATH [--connections N] [--duration S]\n"
          "         [--rate R] [--warmup S] [--body FILE | --bodies FILE]\n"
          "         [--header 'Name: value']... [--timeout S]\n"
          "  --rate R   requests/s in total, open loop, latency from the scheduled send time;\n"
          "             0 (default) is closed loop, as fast as the server answers\n"
          "  --body     one request body; --bodies: one body per line, used in turn\n"
          "  without a body the requests are GETs\n"
          "  --stamp    give each event's messageId placeholder (" STAMP_PLACEHOLDER ")\n"
          "             a sequence number and the request's start (monotonic ns)\n"
          "  --unacked FILE  with --stamp: the numbers whose request got no 2xx\n"
          "  --drain S  after the window, wait up to S seconds for the answers in flight\n",
          stderr);
    exit(2);
}

/* Waits for events up to `until` (absolute, monotonic ns) with sub-millisecond precision. */
static int wait_events(struct epoll_event *evs, int max, int64_t until)
{
    int64_t left = until - now_ns();
    if (left < 0)
        left = 0;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    static bool no_pwait2;
    if (!no_pwait2) {
        struct timespec ts = {.tv_sec = left / NS_PER_S, .tv_nsec = left % NS_PER_S};
        int n = epoll_pwait2(g.epfd, evs, max, &ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        no_pwait2 = true;
    }
#endif
    return epoll_wait(g.epfd, evs, max, (int)((left + NS_PER_MS - 1) / NS_PER_MS));
}

int main(int argc, char **argv)
{
    const char *url = NULL, *body = NULL, *bodies = NULL;
    int nconns = 1;
    double duration = 10, warmup = 0, timeout = 30, drain = 0;
    char **headers = NULL;
    int nheaders = 0;
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},      {"connections", required_argument, 0, 'c'},
        {"duration", required_argument, 0, 'd'}, {"rate", required_argument, 0, 'r'},
        {"body", required_argument, 0, 'b'},     {"bodies", required_argument, 0, 'B'},
        {"header", required_argument, 0, 'H'},   {"warmup", required_argument, 0, 'w'},
        {"timeout", required_argument, 0, 't'},  {"help", no_argument, 0, 'h'},
        {"stamp", no_argument, 0, 's'},          {"unacked", required_argument, 0, 'U'},
        {"drain", required_argument, 0, 'D'},    {0, 0, 0, 0}};
    const char *unacked = NULL;
    int o;
    while ((o = getopt_long(argc, argv, "u:c:d:r:b:B:H:w:t:hsU:D:", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            url = optarg;
            break;
        case 'c':
            nconns = atoi(optarg);
            break;
        case 'd':
            duration = atof(optarg);
            break;
        case 'r':
            g.rate = atof(optarg);
            break;
        case 'b':
            body = optarg;
            break;
        case 'B':
            bodies = optarg;
            break;
        case 'H':
            headers = xrealloc(headers, sizeof(*headers) * (size_t)(nheaders + 1));
            headers[nheaders++] = optarg;
            break;
        case 'w':
            warmup = atof(optarg);
            break;
        case 't':
            timeout = atof(optarg);
            break;
        case 's':
            g.stamp = true;
            break;
        case 'U':
            unacked = optarg;
            break;
        case 'D':
            drain = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (!url || optind != argc || nconns < 1 || duration <= 0 || warmup < 0 || g.rate < 0 ||
        timeout <= 0 || drain < 0 || (body && bodies) || (unacked && !g.stamp))
        usage();
    if (unacked && !(g.unacked = fopen(unacked, "w")))
        die("could not open \"%s\"", unacked);

    char host[256], hostport[300];
    const char *path;
    parse_url(url, host, sizeof(host), hostport, sizeof(hostport), &path);
    build_requests(hostport, path, headers, nheaders, body, bodies);
    signal(SIGPIPE, SIG_IGN);

    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g.epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    g.timeout_ns = (int64_t)(timeout * NS_PER_S);
    conn_t *conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns)
        die("%s", "out of memory");

    int64_t t0 = now_ns();
    g.window_start = t0 + (int64_t)(warmup * NS_PER_S);
    g.window_end = g.window_start + (int64_t)(duration * NS_PER_S);
    if (g.rate > 0) {
        g.interval_ns = (int64_t)((double)NS_PER_S / g.rate);
        if (g.interval_ns < 1)
            g.interval_ns = 1;
        g.next_due = t0;
    }
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].idx = (uint32_t)i;
        conn_connect(&conns[i]);
    }

    struct epoll_event evs[256];
    int64_t next_scan = t0 + 100 * NS_PER_MS;
    for (;;) {
        int64_t now = now_ns();
        int64_t end = g.window_end + (int64_t)(drain * NS_PER_S);
        if (now >= g.window_end && (now >= end || !any_in_flight(conns, nconns)))
            break;
        /* Open loop: hand every due request to a free connection. A request that finds no free
         * connection waits, and its wait counts in its latency. */
        while (g.rate > 0 && g.next_due <= now && g.next_due < g.window_end && g.idle) {
            conn_t *c = g.idle;
            g.idle = c->next_idle;
            conn_begin(c, g.next_due);
            g.next_due += g.interval_ns;
        }
        if (now >= next_scan) {
            next_scan = now + 10 * NS_PER_MS;
            for (int i = 0; i < nconns; i++) {
                conn_t *c = &conns[i];
                if (c->state == C_BACKOFF && now >= c->retry_at) {
                    conn_connect(c);
                } else if (c->has_request && c->state >= C_SENDING && c->state <= C_READING &&
                           now - c->start_ns > g.timeout_ns) {
                    conn_fail(c, "timeout", 0);
                }
            }
        }
        if (now < g.window_end)
            end = g.window_end;
        int64_t until = end < next_scan ? end : next_scan;
        if (g.rate > 0 && g.idle && g.next_due < until && g.next_due < g.window_end)
            until = g.next_due;
        int n = wait_events(evs, 256, until);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll: %s", strerror(errno));
        }
        now = now_ns();
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u64 >> 32];
            if (c->fd >= 0 && c->gen == (uint32_t)evs[i].data.u64)
                on_event(c, evs[i].events, now);
        }
    }

    /* Requests of the window that never got an answer: in flight, or not even sent. */
    uint64_t unfinished = 0;
    for (int i = 0; i < nconns; i++) {
        if (conns[i].has_request && in_window(conns[i].start_ns))
            unfinished++;
        if (conns[i].has_request)
            note_unacked(&conns[i]);
    }
    if (g.rate > 0)
        for (int64_t due = g.next_due; due < g.window_end; due += g.interval_ns)
            if (due >= g.window_start)
                unfinished++;

    /* Our own CPU use: if it nears 100% the figures measure the load generator, not the server. */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    double wall = (double)(now_ns() - t0) / NS_PER_S;

    uint64_t answers = g.ok + g.non2xx;
    printf("{\"requests\":%llu,\"ok\":%llu,\"non2xx\":%llu,\"errors\":%llu,\"seconds\":%.3f,"
           "\"rps\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"connections\":%d,\"target_rps\":%.1f,\"unfinished\":%llu,\"total_ok\":%llu,"
           "\"loadgen_cpu_pct\":%.1f,\"stamped\":%llu}\n",
           (unsigned long long)answers, (unsigned long long)g.ok, (unsigned long long)g.non2xx,
           (unsigned long long)g.errors, duration, (double)answers / duration,
           hist_quantile(&g.hist, 0.50) / 1000.0, hist_quantile(&g.hist, 0.90) / 1000.0,
           hist_quantile(&g.hist, 0.99) / 1000.0, (double)g.hist.max_us / 1000.0, nconns, g.rate,
           (unsigned long long)unfinished, (unsigned long long)g.total_ok,
           wall > 0 ? cpu / wall * 100 : 0, (unsigned long long)g.next_seq);
    fflush(stdout);
    if (g.unacked && fclose(g.unacked) != 0)
        die("could not write \"%s\"", unacked);
    for (int i = 0; i < nconns; i++) {
        conn_close(&conns[i]);
        free(conns[i].own);
    }
    free(conns);
    for (size_t i = 0; i < g.nreqs; i++) {
        free(g.reqs[i].data);
        free(g.reqs[i].stamps);
    }
    free(g.reqs);
    free(headers);
    close(g.epfd);
    return 0;
}
