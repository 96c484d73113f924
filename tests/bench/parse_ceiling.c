/*
 * sluice-parse-ceiling: how many events per second json-c can parse on this machine, the upper
 * bound of a gateway that parses every event with it (tests/bench/run).
 *
 *   sluice-parse-ceiling EVENTS_FILE [--seconds S]
 *
 * EVENTS_FILE holds one JSON event per line. Two figures, each measured over about S seconds
 * (default 3) by going round the file:
 *   parse only:  json_tokener_parse_ex on each line, then json_object_put;
 *   enrich:      parse, add messageId, receivedAt and rudderId (what the gateway adds), then
 *                json_object_to_json_string_ext (the "parse, enrich, re-serialize" ceiling).
 * Prints one JSON line: {"events_per_s":..,"mb_per_s":..,"enrich_events_per_s":..,
 * "enrich_mb_per_s":..,"events":..,"avg_event_bytes":..}; MB are 10^6 bytes of input.
 */
#include <json-c/json.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *p;
    int len;
} line_t;

typedef struct {
    double events_per_s, mb_per_s;
} rate_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (!r)
            break;
        n += r;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Writes a UUID-shaped id made from a counter: cheap, unique, and as long as a real one. */
static void fake_uuid(uint64_t n, char out[37])
{
    snprintf(out, 37, "%08x-%04x-4%03x-8%03x-%012llx", (unsigned)(n * 2654435761u),
             (unsigned)(n >> 16) & 0xffff, (unsigned)n & 0xfff, (unsigned)(n >> 12) & 0xfff,
             (unsigned long long)(n & 0xffffffffffffULL));
}

/* The receivedAt text; the gateway formats it once per request, not per event. */
static void stamp(char *buf, size_t cap)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

/* Runs over the lines for about `seconds`; returns -1 if a line does not parse. */
static int run(const line_t *lines, size_t n, double seconds, bool enrich, rate_t *out)
{
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return -1;
    uint64_t events = 0, bytes = 0;
    size_t sink = 0;
    char id[37], rid[37], received_at[32];
    double t0 = now_s(), t = t0;
    while (t - t0 < seconds) {
        for (size_t i = 0; i < n; i++) {
            json_tokener_reset(tok);
            json_object *ev = json_tokener_parse_ex(tok, lines[i].p, lines[i].len);
            if (!ev || json_tokener_get_error(tok) != json_tokener_success) {
                fprintf(stderr, "sluice-parse-ceiling: line %zu is not valid JSON: %s\n", i + 1,
                        json_tokener_error_desc(json_tokener_get_error(tok)));
                json_object_put(ev);
                json_tokener_free(tok);
                return -1;
            }
            if (enrich) {
                if ((events & 1023) == 0)
                    stamp(received_at, sizeof(received_at));
                fake_uuid(events, id);
                fake_uuid(events ^ 0x5bd1e995, rid);
                json_object_object_add(ev, "messageId", json_object_new_string(id));
                json_object_object_add(ev, "receivedAt", json_object_new_string(received_at));
                json_object_object_add(ev, "rudderId", json_object_new_string(rid));
                const char *s = json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN);
                sink += strlen(s);
            }
            json_object_put(ev);
            events++;
            bytes += (uint64_t)lines[i].len;
            if ((events & 1023) == 0 && (t = now_s()) - t0 >= seconds)
                break;
        }
        t = now_s();
    }
    json_tokener_free(tok);
    double el = t - t0;
    out->events_per_s = (double)events / el;
    out->mb_per_s = (double)bytes / el / 1e6;
    if (enrich && !sink)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    double seconds = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else
            path = NULL, i = argc;
    }
    if (!path || seconds <= 0) {
        fputs("usage: sluice-parse-ceiling EVENTS_FILE [--seconds S]\n", stderr);
        return 2;
    }
    size_t len = 0;
    char *text = read_file(path, &len);
    if (!text) {
        fprintf(stderr, "sluice-parse-ceiling: could not read \"%s\"\n", path);
        return 1;
    }
    size_t n = 0, cap = 0;
    line_t *lines = NULL;
    uint64_t total = 0;
    for (char *p = text, *end = text + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (l) {
            if (n == cap) {
                cap = cap ? cap * 2 : 4096;
                line_t *nls = realloc(lines, cap * sizeof(*lines));
                if (!nls) {
                    fputs("sluice-parse-ceiling: out of memory\n", stderr);
                    return 1;
                }
                lines = nls;
            }
            lines[n].p = p;
            lines[n++].len = (int)l;
            total += l;
        }
        p = nl ? nl + 1 : end;
    }
    if (!n) {
        fprintf(stderr, "sluice-parse-ceiling: \"%s\" has no events\n", path);
        return 1;
    }
    rate_t parse, enrich;
    if (run(lines, n, seconds, false, &parse) || run(lines, n, seconds, true, &enrich))
        return 1;
    printf("{\"events_per_s\":%.0f,\"mb_per_s\":%.1f,\"enrich_events_per_s\":%.0f,"
           "\"enrich_mb_per_s\":%.1f,\"events\":%zu,\"avg_event_bytes\":%.0f}\n",
           parse.events_per_s, parse.mb_per_s, enrich.events_per_s, enrich.mb_per_s, n,
           (double)total / (double)n);
    free(lines);
    free(text);
    return 0;
}
