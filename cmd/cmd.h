/*
 * The `sluice` command line: one entry per subcommand. Each command parses its own arguments
 * (argv[0] is the command name), answers --help, and returns the process exit code:
 * 0 success, 1 failure at run time, 2 bad usage or configuration.
 */
#ifndef SL_CMD_H
#define SL_CMD_H

#include "common/conf.h"
#include "common/pg.h"

typedef struct sl_cmd {
    const char *name;
    const char *summary;
    int (*fn)(int argc, char **argv, const char *config_file);
} sl_cmd_t;

/* Loads the configuration (defaults, config_file or SLUICE_CONFIG, environment) and applies
 * the log settings. On error prints it and returns 2; on success returns 0 and *confp. */
int cmd_load_conf(const char *config_file, sl_conf_t **confp);

/* cmd_load_conf, then a Postgres handle (no connection yet) for postgres.dsn. On error prints
 * it, prefixed with the command's name, and returns 2; on success returns 0, *confp and *pgp
 * (the caller destroys both). Defined in cmd/sluice.c. */
int cmd_load_pg(const char *name, const char *config_file, sl_conf_t **confp, sl_pg_t **pgp);

int cmd_role(int argc, char **argv, const char *config_file);      /* cmd/role.c */
int cmd_config(int argc, char **argv, const char *config_file);    /* cmd/config.c */
int cmd_migrate(int argc, char **argv, const char *config_file);   /* cmd/migrate.c */
int cmd_dev_kafka(int argc, char **argv, const char *config_file); /* cmd/dev_kafka.c */
int cmd_dev_sink(int argc, char **argv, const char *config_file);  /* cmd/dev_sink.c */
int cmd_failed(int argc, char **argv, const char *config_file);    /* cmd/failed.c */
int cmd_status(int argc, char **argv, const char *config_file);    /* cmd/status.c */
int cmd_warehouse(int argc, char **argv, const char *config_file); /* cmd/warehouse.c */
int cmd_replay(int argc, char **argv, const char *config_file);    /* cmd/replay.c */
int cmd_offsets(int argc, char **argv, const char *config_file);   /* cmd/offsets.c */
int cmd_topics(int argc, char **argv, const char *config_file);    /* cmd/topics.c */
int cmd_lag(int argc, char **argv, const char *config_file);       /* cmd/lag.c */
int cmd_version(int argc, char **argv, const char *config_file);   /* cmd/sluice.c */

#endif
