/* Sync schedules, see schedule.h. */
#include "warehouse/schedule.h"

#define DAY_MS (24LL * 60 * 60 * 1000)

int wh_sync_start_parse(const char *s)
{
    if (!s)
        return -1;
    int h = 0, m = 0, digits = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9' && digits < 2; p++, digits++)
        h = h * 10 + (*p - '0');
    if (digits == 0 || *p != ':')
        return -1;
    p++;
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2])
        return -1;
    m = (p[0] - '0') * 10 + (p[1] - '0');
    if (h > 23 || m > 59)
        return -1;
    return h * 60 + m;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

int64_t wh_sync_prev(int64_t now_ms, int start_min, int64_t freq_ms)
{
    int64_t day0 = floor_div(now_ms, DAY_MS) * DAY_MS, in_day = now_ms - day0;
    /* the day's first time: syncStartAt less as many frequencies as fit */
    int64_t first = ((int64_t)start_min * 60000) % freq_ms;
    if (in_day >= first)
        return day0 + first + (in_day - first) / freq_ms * freq_ms;
    /* before the day's first time: the previous day's last */
    return day0 - DAY_MS + first + (DAY_MS - 1 - first) / freq_ms * freq_ms;
}

bool wh_sync_due(int64_t since_ms, int64_t now_ms, int start_min, int64_t freq_ms)
{
    if (freq_ms <= 0)
        return true;
    if (start_min < 0)
        return now_ms - since_ms >= freq_ms;
    return wh_sync_prev(now_ms, start_min, freq_ms) > since_ms;
}
