# The KAFKA destination (router/kafka_dest.c) against the real Kafka fixture.
sluice_test(NAME integration.kafka_dest SOURCES integration/test_kafka_dest.c LIBS sluice_router
            LABEL integration FIXTURES kafka TIMEOUT 120)
