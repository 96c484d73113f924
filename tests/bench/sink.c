/*
 * sluice-bench-sink: the smallest HTTP/1.1 destination that can count what the router delivers
 * (tests/bench/router). One thread, epoll, keep-alive; it answers every request at once with a
 * fixed status, or never (--stall), and keeps only counters.
 *
 *   sluice-bench-sink [--port P] [--status 200] [--stall] [--port-file FILE] [--record FILE]
 *                     [--arrival]
 *
 * --record appends the value of every "messageId":"..." in the body of each request it answers
 * with 2xx to FILE, one a line (tests/bench/longrun counts deliveries by messageId with it);
 * the file is flushed whenever /_sink/stats is read. With --arrival each line is "ID NS": NS is
 * when the request was read in full, in CLOCK_MONOTONIC nanoseconds (tests/bench/e2e reads when
 * each event was sent from its messageId, written by sluice-loadgen --stamp).
 *
 * Prints the port it listens on (useful with --port 0) to stdout, or to --port-file.
 * GET /_sink/stats answers (always 200, also in --stall mode):
 *   {"requests":..,"events":..,"bytes":..,"first_ns":..,"last_ns":..}
 * requests and bytes count the other requests and their bodies; events counts the events in the
 * bodies: the top-level elements of a body that is a JSON array (a batch), else 1. first_ns and
 * last_ns are CLOCK_MONOTONIC (shared by every process of the machine) when the first and the
 * latest of those requests were read in full; 0 before the first.
 * POST /_sink/reset sets every counter back to 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct conn {
    int fd;
    char *buf;
    size_t len, cap;
    char *out; /* answers not yet written */
    size_t olen, ocap, ooff;
    bool close_after;
    bool want_out; /* EPOLLOUT registered */
} conn_t;

static struct {
    int status;
    bool stall;
    uint64_t requests, events, bytes;
    int64_t first_ns, last_ns;
    FILE *record;
    bool arrival;
} g = {.status = 200};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "sluice-bench-sink: out of memory\n");
        abort();
    }
    return p;
}

static void reserve(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    *p = xrealloc(*p, c);
    *cap = c;
}

/* Events in a body: the top-level elements of a JSON array, else 1 (an empty array is 0). */
static uint64_t count_events(const char *b, size_t n)
{
    size_t i = 0;
    while (i < n && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t'))
        i++;
    if (i == n || b[i] != '[')
        return 1;
    uint64_t count = 0;
    int depth = 0;
    bool in_str = false, any = false;
    for (; i < n; i++) {
        char c = b[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        switch (c) {
        case '"':
            in_str = true;
            any = true;
            break;
        case '[':
        case '{':
            depth++;
            if (depth > 1)
                any = true;
            break;
        case ']':
        case '}':
            depth--;
            break;
        case ',':
            if (depth == 1)
                count++;
            break;
        case ' ':
        case '\n':
        case '\r':
        case '\t':
            break;
        default:
            if (depth >= 1)
                any = true;
        }
    }
    return any ? count + 1 : 0;
}

/* --record: every messageId in a body, one a line. */
static void record_ids(const char *b, size_t n, int64_t t)
{
    static const char key[] = "\"messageId\":\"";
    const size_t klen = sizeof(key) - 1;
    for (const char *p = b, *end = b + n; (p = memmem(p, (size_t)(end - p), key, klen));) {
        p += klen;
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q)
            break;
        fwrite(p, 1, (size_t)(q - p), g.record);
        if (g.arrival)
            fprintf(g.record, " %lld", (long long)t);
        fputc('\n', g.record);
        p = q;
    }
}

static void queue_answer(conn_t *c, int status, const char *body)
{
    char head[256];
    size_t blen = strlen(body);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "%s\r\n",
                     status, status < 300 ? "OK" : "Error", blen,
                     c->close_after ? "Connection: close\r\n" : "");
    reserve(&c->out, &c->ocap, c->olen + (size_t)n + blen);
    memcpy(c->out + c->olen, head, (size_t)n);
    memcpy(c->out + c->olen + n, body, blen);
    c->olen += (size_t)n + blen;
}

/* A header's value in the head [h, end), or NULL; *vlen its length. */
static const char *header(const char *h, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *p = h; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* Handles every complete request in c->buf. Returns false to drop the connection. */
static bool handle(conn_t *c)
{
    size_t off = 0;
    for (;;) {
        char *start = c->buf + off;
        size_t avail = c->len - off;
        char *end = avail >= 4 ? memmem(start, avail, "\r\n\r\n", 4) : NULL;
        if (!end)
            break;
        size_t head_len = (size_t)(end - start) + 4, vlen, body_len = 0;
        const char *v = header(start, end, "Content-Length", &vlen);
        if (v)
            body_len = (size_t)strtoull(v, NULL, 10);
        else if (header(start, end, "Transfer-Encoding", &vlen))
            return false; /* the router sends Content-Length; chunked bodies are not counted */
        if (avail < head_len + body_len)
            break;
        v = header(start, end, "Connection", &vlen);
        c->close_after = v && vlen == 5 && strncasecmp(v, "close", 5) == 0;
        bool control = avail > 12 && memcmp(start, "GET /_sink/", 11) == 0;
        bool reset = avail > 13 && memcmp(start, "POST /_sink/reset", 17) == 0;
        if (control) {
            char body[256];
            snprintf(body, sizeof(body),
                     "{\"requests\":%llu,\"events\":%llu,\"bytes\":%llu,\"first_ns\":%lld,"
                     "\"last_ns\":%lld}",
                     (unsigned long long)g.requests, (unsigned long long)g.events,
                     (unsigned long long)g.bytes, (long long)g.first_ns, (long long)g.last_ns);
            queue_answer(c, 200, body);
            if (g.record)
                fflush(g.record);
        } else if (reset) {
            g.requests = g.events = g.bytes = 0;
            g.first_ns = g.last_ns = 0;
            queue_answer(c, 200, "{\"ok\":true}");
        } else {
            int64_t t = now_ns();
            if (!g.first_ns)
                g.first_ns = t;
            g.last_ns = t;
            g.requests++;
            g.bytes += body_len;
            g.events += count_events(start + head_len, body_len);
            if (g.record && !g.stall && g.status < 300)
                record_ids(start + head_len, body_len, t);
            if (!g.stall)
                queue_answer(c, g.status, g.status < 300 ? "{\"ok\":true}" : "{\"ok\":false}");
        }
        off += head_len + body_len;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    return true;
}

/* Writes what is queued. Returns false on error; *done when nothing is left. */
static bool flush_out(conn_t *c, bool *done)
{
    while (c->ooff < c->olen) {
        ssize_t n = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *done = false;
                return true;
            }
            if (errno == EINTR)
                continue;
            return false;
        }
        c->ooff += (size_t)n;
    }
    c->ooff = c->olen = 0;
    *done = true;
    return true;
}

static void conn_close(int ep, conn_t *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c->out);
    free(c);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"port", required_argument, NULL, 'p'},   {"status", required_argument, NULL, 's'},
        {"stall", no_argument, NULL, 'S'},        {"port-file", required_argument, NULL, 'f'},
        {"record", required_argument, NULL, 'r'}, {"arrival", no_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    int port = 0, o;
    const char *port_file = NULL;
    while ((o = getopt_long(argc, argv, "p:s:Sf:r:ah", opts, NULL)) != -1) {
        switch (o) {
        case 'p':
            port = atoi(optarg);
            break;
        case 's':
            g.status = atoi(optarg);
            break;
        case 'S':
            g.stall = true;
            break;
        case 'f':
            port_file = optarg;
            break;
        case 'r':
            g.record = fopen(optarg, "a");
            if (!g.record) {
                fprintf(stderr, "sluice-bench-sink: could not open \"%s\": %s\n", optarg,
                        strerror(errno));
                return 1;
            }
            break;
        case 'a':
            g.arrival = true;
            break;
        default:
            fprintf(stderr, "usage: sluice-bench-sink [--port P] [--status 200] [--stall] "
                            "[--port-file FILE] [--record FILE] [--arrival]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (port < 0 || port > 65535 || g.status < 100 || g.status > 599) {
        fprintf(stderr, "sluice-bench-sink: --port must be 0..65535 and --status 100..599\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 4096) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) != 0) {
        fprintf(stderr, "sluice-bench-sink: could not listen on 127.0.0.1:%d: %s\n", port,
                strerror(errno));
        return 1;
    }
    FILE *pf = port_file ? fopen(port_file, "w") : stdout;
    if (!pf) {
        fprintf(stderr, "sluice-bench-sink: could not open \"%s\": %s\n", port_file,
                strerror(errno));
        return 1;
    }
    fprintf(pf, "%d\n", ntohs(a.sin_port));
    fclose(pf);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) {
            perror("sluice-bench-sink: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    c = calloc(1, sizeof(*c));
                    if (!c)
                        abort();
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            bool ok = true, done = true;
            if (evs[i].events & EPOLLOUT)
                ok = flush_out(c, &done);
            if (ok && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                for (;;) {
                    reserve(&c->buf, &c->cap, c->len + 65536);
                    ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
                    if (r > 0) {
                        c->len += (size_t)r;
                        continue;
                    }
                    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                    if (r < 0 && errno == EINTR)
                        continue;
                    ok = false; /* closed by the peer, or an error */
                    break;
                }
                if (c->len && !handle(c))
                    ok = false;
                if (ok)
                    ok = flush_out(c, &done);
            }
            if (!ok || (done && c->close_after)) {
                conn_close(ep, c);
                continue;
            }
            if (c->want_out == done) {
                c->want_out = !done;
                struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | (done ? 0 : EPOLLOUT),
                                          .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
}
