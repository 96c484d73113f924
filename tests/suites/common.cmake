# Tests of the shared modules in common/.
sluice_test(NAME unit.workspace SOURCES unit/test_workspace.c)
sluice_test(NAME unit.http SOURCES unit/test_http.c)
sluice_test(NAME integration.kafka_offsets.embedded SOURCES integration/test_kafka_offsets.c
            LABEL integration)
sluice_test(NAME integration.kafka_offsets.real TARGET integration_kafka_offsets_embedded
            ARGS --real LABEL integration FIXTURES kafka)
sluice_test(NAME integration.pg_migrate SOURCES integration/test_pg_migrate.c LABEL integration
            FIXTURES postgres)
sluice_test(NAME integration.kafka_join SOURCES integration/test_kafka_join.c LABEL integration
            FIXTURES kafka)
