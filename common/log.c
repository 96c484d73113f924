/* Log line formatting and output, see log.h. */
#include "common/log.h"
#include "common/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int sl_log_min_level = SL_LOG_INFO;
static bool log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int sl_log_configure(const char *level, const char *format)
{
    int lvl = -1;
    for (int i = 0; i < 4; i++)
        if (level && strcmp(level, level_names[i]) == 0)
            lvl = i;
    if (lvl < 0)
        return -1;
    if (format && strcmp(format, "json") == 0)
        log_json = true;
    else if (format && strcmp(format, "text") == 0)
        log_json = false;
    else
        return -1;
    sl_log_min_level = lvl;
    return 0;
}

void sl_log_set_level(sl_log_level_t level)
{
    sl_log_min_level = (int)level;
}

void sl_log_write(sl_log_level_t level, const char *component, const char *fmt, ...)
{
    char ts[32], msg[2048];
    struct timeval tv;
    struct tm tm;
    va_list ap;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    /* Build the whole line first and write it once, so lines from threads never interleave. */
    char line[2600];
    int len;
    if (log_json) {
        sl_buf_t j = SL_BUF_INIT;
        sl_buf_printf(&j, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":", ts, level_names[level]);
        sl_buf_json_str(&j, component, strlen(component));
        sl_buf_puts(&j, ",\"msg\":");
        sl_buf_json_str(&j, msg, strlen(msg));
        sl_buf_puts(&j, "}\n");
        ssize_t w = write(STDERR_FILENO, j.data, j.len);
        (void)w;
        sl_buf_free(&j);
        return;
    }
    len = snprintf(line, sizeof(line), "%s %-5s %s: %s\n", ts, level_names[level], component, msg);
    if (len > (int)sizeof(line) - 1)
        len = (int)sizeof(line) - 1;
    ssize_t w = write(STDERR_FILENO, line, (size_t)len);
    (void)w;
}
