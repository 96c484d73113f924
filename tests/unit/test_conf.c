/* Unit tests for common/conf.c: defaults, file, environment, validation and pass-through. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/conf.h"

static char *write_tmp(const char *content)
{
    static char path[64];
    strcpy(path, "/tmp/sluice-conf-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

static void clear_env(void)
{
    unsetenv("SLUICE_GATEWAY_PORT");
    unsetenv("SLUICE_KAFKA_BROKERS");
    unsetenv("SLUICE_KAFKA_SASL_MECHANISM");
    unsetenv("SLUICE_CONFIG");
    unsetenv("SLUICE_ROUTER_TIMEOUT");
}

static void test_defaults(void **state)
{
    (void)state;
    clear_env();
    sl_conf_t *conf;
    char err[256];
    assert_int_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_int(conf, "gateway.port"), 8080);
    assert_string_equal(sl_conf_str(conf, "kafka.topic_prefix"), "sluice.");
    assert_int_equal(sl_conf_size(conf, "gateway.max_event_size"), 32 * 1024);
    assert_int_equal(sl_conf_duration_ms(conf, "router.give_up_after"), 180 * 60 * 1000);
    assert_true(sl_conf_bool(conf, "postgres.migrate"));
    sl_conf_destroy(conf);
}

static void count_prop(const char *name, const char *value, void *opaque)
{
    if (strcmp(name, "sasl.mechanism") == 0 && strcmp(value, "PLAIN") == 0)
        (*(int *)opaque) |= 1;
    if (strcmp(name, "security.protocol") == 0 && strcmp(value, "SASL_SSL") == 0)
        (*(int *)opaque) |= 2;
}

static void test_file_env_and_passthrough(void **state)
{
    (void)state;
    clear_env();
    const char *path = write_tmp("# comment\n"
                                 "gateway.port = 9000\n"
                                 "kafka.brokers = a:9092\n"
                                 "kafka.security.protocol = SASL_SSL\n"
                                 "router.timeout = 2s\n");
    setenv("SLUICE_KAFKA_BROKERS", "b:9092,c:9092", 1);
    setenv("SLUICE_KAFKA_SASL_MECHANISM", "PLAIN", 1);
    sl_conf_t *conf;
    char err[256];
    assert_int_equal(sl_conf_load(&conf, path, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_int(conf, "gateway.port"), 9000);
    assert_string_equal(sl_conf_str(conf, "kafka.brokers"), "b:9092,c:9092"); /* env wins */
    assert_int_equal(sl_conf_duration_ms(conf, "router.timeout"), 2000);
    int seen = 0;
    sl_conf_kafka_props_foreach(conf, count_prop, &seen);
    assert_int_equal(seen, 3);
    sl_conf_destroy(conf);
    unlink(path);
    clear_env();
}

static void test_bad_values_name_the_option(void **state)
{
    (void)state;
    clear_env();
    sl_conf_t *conf;
    char err[256];
    setenv("SLUICE_GATEWAY_PORT", "99999", 1);
    assert_int_not_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "gateway.port"));
    assert_non_null(strstr(err, "SLUICE_GATEWAY_PORT"));
    setenv("SLUICE_GATEWAY_PORT", "http", 1);
    assert_int_not_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "expected an integer"));
    clear_env();
    setenv("SLUICE_ROUTER_TIMEOUT", "5 parsecs", 1);
    assert_int_not_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "router.timeout"));
    clear_env();
    const char *path = write_tmp("gateway.prot = 1\n");
    assert_int_not_equal(sl_conf_load(&conf, path, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "unknown option \"gateway.prot\""));
    assert_non_null(strstr(err, "line 1"));
    unlink(path);
    assert_int_not_equal(sl_conf_load(&conf, "/nonexistent/sluice.conf", err, sizeof(err)), 0);
    assert_non_null(strstr(err, "could not open config file"));
}

static void test_print_masks_secrets(void **state)
{
    (void)state;
    clear_env();
    sl_conf_t *conf;
    char err[256];
    assert_int_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_int_equal(
        sl_conf_set(conf, "postgres.dsn", "host=db password=hunter2 user=u", err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.sasl.password", "s3cret", err, sizeof(err)), 0);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    sl_conf_print(conf, f);
    fclose(f);
    assert_null(strstr(out, "hunter2"));
    assert_null(strstr(out, "s3cret"));
    assert_non_null(strstr(out, "host=db password=**** user=u"));
    free(out);
    assert_int_equal(sl_conf_set(conf, "postgres.dsn", "postgresql://u:pw@db/x", err, sizeof(err)),
                     0);
    f = open_memstream(&out, &len);
    sl_conf_print(conf, f);
    fclose(f);
    assert_null(strstr(out, ":pw@"));
    free(out);
    sl_conf_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_file_env_and_passthrough),
        cmocka_unit_test(test_bad_values_name_the_option),
        cmocka_unit_test(test_print_masks_secrets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
