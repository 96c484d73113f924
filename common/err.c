/* Error helpers, see err.h. */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>

int sl_err_set(char *errstr, size_t errstr_size, int err, const char *fmt, ...)
{
    if (errstr && errstr_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errstr, errstr_size, fmt, ap);
        va_end(ap);
    }
    return err;
}

const char *sl_err_name(int err)
{
    switch (err) {
    case SL_OK:
        return "ok";
    case SL_ERR_INVALID:
        return "invalid";
    case SL_ERR_TRANSIENT:
        return "transient";
    case SL_ERR_NOTFOUND:
        return "not found";
    case SL_ERR_FATAL:
        return "fatal";
    default:
        return "unknown";
    }
}
