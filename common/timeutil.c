/* Clocks and RFC 3339 date-times, see timeutil.h. */
#include "common/timeutil.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t sl_time_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sl_time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sl_time_deadline(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
 * days-to-civil algorithm: eras of 400 years, years starting in March). */
static void civil_from_days(int64_t days, int64_t *y, int *m, int *d)
{
    days += 719468;
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t doe = days - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static char *put_digits(char *p, int64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + n;
}

/* Without gmtime_r and strftime (a hot path: parking formats a job's times, the gateway
 * every request's receivedAt). */
void sl_time_format_ms(int64_t ms, char out[SL_TIME_STRLEN])
{
    int64_t s = ms / 1000, frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        s--;
    }
    int64_t days = s / 86400, sod = s % 86400;
    if (sod < 0) {
        sod += 86400;
        days--;
    }
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) { /* as strftime's %Y would print it */
        snprintf(out, SL_TIME_STRLEN, "%" PRId64 "-%02d-%02dT%02d:%02d:%02d.%03dZ", y, m, d,
                 (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), (int)frac);
        return;
    }
    char *p = put_digits(out, y, 4);
    *p++ = '-';
    p = put_digits(p, m, 2);
    *p++ = '-';
    p = put_digits(p, d, 2);
    *p++ = 'T';
    p = put_digits(p, sod / 3600, 2);
    *p++ = ':';
    p = put_digits(p, sod / 60 % 60, 2);
    *p++ = ':';
    p = put_digits(p, sod % 60, 2);
    *p++ = '.';
    p = put_digits(p, frac, 3);
    *p++ = 'Z';
    *p = '\0';
}

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)**p))
            return -1;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return 0;
}

int sl_time_parse_ms(const char *s, int64_t *ms)
{
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0;
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
        return -1;
    int64_t frac_ms = 0;
    int off_min = 0;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi))
            return -1;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &sec))
                return -1;
        }
        if (*p == '.' || *p == ',') {
            p++;
            int scale = 100, any = 0;
            while (isdigit((unsigned char)*p)) {
                frac_ms += (*p - '0') * scale;
                scale /= 10;
                p++;
                any = 1;
            }
            if (!any)
                return -1;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p == '-' ? -1 : 1, oh, om = 0;
            p++;
            if (digits(&p, 2, &oh))
                return -1;
            if (*p == ':')
                p++;
            if (isdigit((unsigned char)*p) && digits(&p, 2, &om))
                return -1;
            off_min = sign * (oh * 60 + om);
        }
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - (int64_t)off_min * 60) * 1000 + frac_ms;
    return 0;
}

int sl_time_parse_kafka_ms(const char *s, int64_t *ms)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddd";
    size_t n = sizeof(shape) - 1;
    if (strlen(s) < n)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return -1;
    const char *z = s + n;
    if (*z == '+' || *z == '-') {
        if (!isdigit((unsigned char)z[1]) || !isdigit((unsigned char)z[2]) ||
            (z[1] - '0') * 10 + (z[2] - '0') > 23)
            return -1;
        if (z[3] && (z[3] != ':' || !isdigit((unsigned char)z[4]) ||
                     !isdigit((unsigned char)z[5]) || z[4] > '5' || z[6]))
            return -1;
    } else if (*z && strcmp(z, "Z") != 0) {
        return -1;
    }
    int y = atoi(s), mo = atoi(s + 5), d = atoi(s + 8);
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap) ||
        atoi(s + 11) > 23 || atoi(s + 14) > 59 || atoi(s + 17) > 59)
        return -1;
    return sl_time_parse_ms(s, ms);
}

int sl_time_parse_iso_duration_ms(const char *s, int64_t *ms)
{
    /* Units in the order they may appear; T separates the date part (D) from the time part. */
    static const struct {
        char unit;
        bool time;
        int64_t ms;
    } units[] = {
        {'D', false, 86400000}, {'H', true, 3600000}, {'M', true, 60000}, {'S', true, 1000}};
    const char *p = s;
    bool neg = *p == '-';
    if (*p == '+' || *p == '-')
        p++;
    if (toupper((unsigned char)*p++) != 'P')
        return -1;
    bool in_time = false, any = false;
    size_t next = 0; /* the first unit still allowed */
    int64_t total = 0;
    while (*p) {
        if (toupper((unsigned char)*p) == 'T' && !in_time) {
            in_time = true;
            p++;
            if (!*p)
                return -1; /* a T must be followed by a time part */
            continue;
        }
        bool vneg = *p == '-';
        if (*p == '+' || *p == '-')
            p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        int64_t v = 0, frac = 0;
        for (; isdigit((unsigned char)*p); p++)
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
                return -1;
        bool has_frac = *p == '.' || *p == ',';
        if (has_frac) {
            p++;
            int nd = 0, scale = 100;
            for (; isdigit((unsigned char)*p); p++, nd++) {
                frac += (*p - '0') * scale;
                scale /= 10;
            }
            if (nd > 9)
                return -1;
        }
        char u = (char)toupper((unsigned char)*p++);
        size_t i = next;
        while (i < sizeof(units) / sizeof(units[0]) && units[i].unit != u)
            i++;
        if (i == sizeof(units) / sizeof(units[0]) || units[i].time != in_time ||
            (has_frac && u != 'S'))
            return -1;
        next = i + 1;
        int64_t part;
        if (__builtin_mul_overflow(v, units[i].ms, &part) ||
            __builtin_add_overflow(part, frac, &part))
            return -1;
        if (__builtin_add_overflow(total, vneg ? -part : part, &total))
            return -1;
        any = true;
    }
    if (!any)
        return -1;
    *ms = neg ? -total : total;
    return 0;
}
