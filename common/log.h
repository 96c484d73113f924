/*
 * Logging: one line per event to stderr, as text (`ts level component: message`) or as
 * JSON lines. The macros check the level before any argument is formatted. Thread-safe.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stdbool.h>

typedef enum sl_log_level {
    SL_LOG_DEBUG = 0,
    SL_LOG_INFO = 1,
    SL_LOG_WARN = 2,
    SL_LOG_ERROR = 3
} sl_log_level_t;

extern int sl_log_min_level;

/* Sets level ("debug", "info", "warn", "error") and format ("text" or "json").
 * Returns -1 if either is unknown. Call once at start, before threads. */
int sl_log_configure(const char *level, const char *format);
void sl_log_set_level(sl_log_level_t level);

void sl_log_write(sl_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sl_log(level, component, ...)                                                              \
    do {                                                                                           \
        if ((int)(level) >= sl_log_min_level)                                                      \
            sl_log_write((level), (component), __VA_ARGS__);                                       \
    } while (0)

#define sl_debug(component, ...) sl_log(SL_LOG_DEBUG, component, __VA_ARGS__)
#define sl_info(component, ...)  sl_log(SL_LOG_INFO, component, __VA_ARGS__)
#define sl_warn(component, ...)  sl_log(SL_LOG_WARN, component, __VA_ARGS__)
#define sl_error(component, ...) sl_log(SL_LOG_ERROR, component, __VA_ARGS__)

#endif
