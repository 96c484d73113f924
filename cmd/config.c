/* `sluice config`: the effective configuration (secrets masked) or the reference table. */
#include "cmd/cmd.h"
#include "common/conf.h"
#include "common/log.h"

#include <stdio.h>
#include <string.h>

int cmd_load_conf(const char *config_file, sl_conf_t **confp)
{
    char errstr[512];
    if (sl_conf_load(confp, config_file, errstr, sizeof(errstr)) != 0) {
        fprintf(stderr, "sluice: configuration error: %s\n", errstr);
        return 2;
    }
    if (sl_log_configure(sl_conf_str(*confp, "log.level"), sl_conf_str(*confp, "log.format")) < 0) {
        fprintf(stderr, "sluice: configuration error: bad log.level or log.format\n");
        sl_conf_destroy(*confp);
        return 2;
    }
    return 0;
}

int cmd_config(int argc, char **argv, const char *config_file)
{
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        puts("usage: sluice config [--reference]\n\n"
             "Prints every option's effective value and where it came from (default, file,\n"
             "env), with secrets masked. --reference prints the configuration reference as a\n"
             "Markdown table instead (the README's table is generated from it).");
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--reference") == 0) {
        sl_conf_print_reference(stdout);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "sluice config: unknown argument \"%s\"\n", argv[1]);
        return 2;
    }
    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;
    sl_conf_print(conf, stdout);
    sl_conf_destroy(conf);
    return 0;
}
