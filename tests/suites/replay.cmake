# `sluice replay` end to end: back-dated events (captured from the gateway, produced again with
# old Kafka timestamps by sluice-test-produce-at) replayed to a new destination, a dry run,
# and an interrupted replay resumed.
add_executable(sluice-test-produce-at ${CMAKE_SOURCE_DIR}/tests/e2e/produce_at.c)
target_link_libraries(sluice-test-produce-at PRIVATE PkgConfig::RDKAFKA PkgConfig::JSONC)
sluice_py_test(NAME e2e.ops.replay SCRIPT e2e/test_replay.py FIXTURES "postgres;kafka"
               TIMEOUT 180 ENV SLUICE_TEST_PRODUCE_AT=$<TARGET_FILE:sluice-test-produce-at>)
