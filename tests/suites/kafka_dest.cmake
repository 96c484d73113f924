# The KAFKA destination (router/kafka_dest.c) against the real Kafka fixture.
sluice_test(NAME integration.kafka_dest SOURCES integration/test_kafka_dest.c LIBS sluice_router
            LABEL integration FIXTURES kafka TIMEOUT 120)
sluice_py_test(NAME e2e.kafka_destination SCRIPT e2e/test_kafka_destination.py
               FIXTURES "postgres;kafka" TIMEOUT 180)
