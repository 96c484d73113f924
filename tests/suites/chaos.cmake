# The fault harness (tests/chaos): the whole pipeline as separate processes on its own
# three-node Kafka and Postgres, under load, with roles, brokers, Postgres and sinks broken on a
# schedule; every acknowledged event must arrive, in order per user. About 3 minutes.
sluice_py_test(NAME chaos.ci SCRIPT chaos/run
               ARGS --ci --report ${CMAKE_BINARY_DIR}/chaos-ci-report.json
               LABEL chaos TIMEOUT 600)
