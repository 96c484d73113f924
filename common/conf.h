/*
 * Configuration: one table of options (name, type, default, range, description), read from
 * defaults, then an optional properties file, then SLUICE_* environment variables.
 *
 * Names are dotted (`kafka.brokers`); the environment variable is SLUICE_ + the name in upper
 * case with dots as underscores (SLUICE_KAFKA_BROKERS). Any `kafka.<property>` key in the file
 * and any SLUICE_KAFKA_<PROPERTY> variable that is not in the table passes through to
 * librdkafka verbatim (SLUICE_KAFKA_SASL_MECHANISM -> sasl.mechanism), so every client option
 * of a secured cluster works without code here knowing it.
 *
 * The file is Java-properties style, as Kafka users know it: `name = value` lines, `#`
 * comments. A bad value fails sl_conf_load with a message naming the option.
 */
#ifndef SL_CONF_H
#define SL_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct sl_conf sl_conf_t;

/* Loads the table defaults, then `file` (may be NULL; if NULL and SLUICE_CONFIG is set, that
 * file), then the environment. Returns 0 and a new conf in *confp (free with sl_conf_destroy),
 * or SL_ERR_INVALID with errstr naming the option and the problem. */
int sl_conf_load(sl_conf_t **confp, const char *file, char *errstr, size_t errstr_size);
void sl_conf_destroy(sl_conf_t *conf);

/* Sets one option as if from the environment (used by tests and by `sluice all` to point
 * roles at the embedded broker). Validates like load; returns 0 or SL_ERR_INVALID. */
int sl_conf_set(sl_conf_t *conf, const char *name, const char *value, char *errstr,
                size_t errstr_size);

/* Typed getters. The name must be in the table (a programming error aborts). Strings are
 * owned by conf and live until it is destroyed or the option is set again. */
const char *sl_conf_str(const sl_conf_t *conf, const char *name);
int64_t sl_conf_int(const sl_conf_t *conf, const char *name);
bool sl_conf_bool(const sl_conf_t *conf, const char *name);
/* Parses a duration as options take it: "250ms", "5s", "2m", "1h", "1d" or a bare number of
 * milliseconds. Returns 0, or -1 when s is not one. */
int sl_conf_parse_duration(const char *s, int64_t *out);
/* Durations are written 250ms, 5s, 2m, 1h (a bare number is milliseconds); returned in ms. */
int64_t sl_conf_duration_ms(const sl_conf_t *conf, const char *name);
/* Sizes are written 512, 32KB, 4MB (1024-based); returned in bytes. */
int64_t sl_conf_size(const sl_conf_t *conf, const char *name);

/* librdkafka properties that passed through, in the order set; later ones win.
 * Calls fn(name, value, opaque) for each. */
void sl_conf_kafka_props_foreach(const sl_conf_t *conf,
                                 void (*fn)(const char *name, const char *value, void *opaque),
                                 void *opaque);

/* Prints every option's effective value and where it came from; secrets are masked. */
void sl_conf_print(const sl_conf_t *conf, FILE *out);
/* Prints the configuration reference (a Markdown table) generated from the option table. */
void sl_conf_print_reference(FILE *out);

#endif
