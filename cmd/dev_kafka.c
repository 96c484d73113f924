/* `sluice dev-kafka`: the embedded Kafka-protocol dev broker as a standalone server. */
#include "cmd/cmd.h"
#include "common/devkafka.h"
#include "common/http.h"
#include "common/kafka.h"
#include "common/log.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fputs("usage: sluice dev-kafka [--brokers N] [--partitions N] [--control-port P]\n\n"
          "Runs librdkafka's mock cluster, a Kafka-protocol server that holds everything in\n"
          "memory, on loopback. Prints the bootstrap servers as the first line on stdout and\n"
          "creates the pipeline's topics (<kafka.topic_prefix>events, ...delivery).\n"
          "Fault injection over HTTP on the control port:\n"
          "  GET  /dev-kafka/                               brokers and topics\n"
          "  POST /dev-kafka/brokers/<id>/down | /up        take a broker down or up\n"
          "  POST /dev-kafka/brokers/<id>/rtt?ms=N          add latency to a broker\n"
          "  POST /dev-kafka/errors?api=Produce&error=NOT_ENOUGH_REPLICAS&count=N\n"
          "Limits: no CreateTopics, ListGroups or DescribeGroups; transaction aborts are not\n"
          "simulated; about 5 MiB or 100,000 message sets per partition.\n",
          out);
}

int cmd_dev_kafka(int argc, char **argv, const char *config_file)
{
    static const struct option longopts[] = {{"brokers", required_argument, NULL, 'b'},
                                             {"partitions", required_argument, NULL, 'p'},
                                             {"control-port", required_argument, NULL, 'c'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int brokers = 1, partitions = -1, control_port = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "b:p:c:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            brokers = atoi(optarg);
            break;
        case 'p':
            partitions = atoi(optarg);
            break;
        case 'c':
            control_port = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (brokers < 1 || brokers > 16 || control_port < 0 || control_port > 65535) {
        fprintf(stderr, "sluice dev-kafka: --brokers must be 1..16 and --control-port 0..65535\n");
        return 2;
    }
    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;
    if (partitions < 1)
        partitions = (int)sl_conf_int(conf, "kafka.partitions");

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* threads started below inherit the mask */

    char err[512];
    sl_devkafka_t *d =
        sl_devkafka_start(brokers, partitions, sl_conf_str(conf, "kafka.topic_prefix"),
                          sl_kafka_pipeline_topics, err, sizeof(err));
    if (!d) {
        fprintf(stderr, "sluice dev-kafka: %s\n", err);
        sl_conf_destroy(conf);
        return 1;
    }
    sl_http_opts_t opts = {
        .component = "dev-kafka", .host = "127.0.0.1", .port = control_port, .threads = 1};
    sl_http_server_t *srv = sl_http_server_new(&opts);
    sl_devkafka_http_routes(d, srv);
    if (sl_http_server_start(srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice dev-kafka: control: %s\n", err);
        sl_http_server_destroy(srv);
        sl_devkafka_stop(d);
        sl_conf_destroy(conf);
        return 1;
    }
    printf("%s\n", sl_devkafka_bootstraps(d));
    fflush(stdout);
    sl_info("dev-kafka",
            "%d broker(s) at %s, %d partitions per topic; events are held in memory "
            "only",
            brokers, sl_devkafka_bootstraps(d), partitions);
    sl_info("dev-kafka", "control: http://127.0.0.1:%d/dev-kafka/", sl_http_server_port(srv));
    int sig;
    sigwait(&set, &sig);
    sl_info("dev-kafka", "stopping");
    sl_http_server_destroy(srv);
    sl_devkafka_stop(d);
    sl_conf_destroy(conf);
    return 0;
}
