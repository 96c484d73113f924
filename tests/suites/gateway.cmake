# Gateway end-to-end tests: a real SDK against the gateway, and the gateway when Kafka is
# taken away.
sluice_py_test(NAME e2e.sdk_node SCRIPT e2e/test_sdk_node.py FIXTURES "postgres;kafka"
               TIMEOUT 400)
sluice_py_test(NAME e2e.gateway_kafka.devbroker SCRIPT e2e/test_gateway_kafka.py
               ARGS --case devbroker FIXTURES postgres TIMEOUT 150)
# These stop brokers of the shared kafka fixture: nothing else may run meanwhile.
foreach(case real-down real-one-down)
  sluice_py_test(NAME e2e.gateway_kafka.${case} SCRIPT e2e/test_gateway_kafka.py
                 ARGS --case ${case} FIXTURES "postgres;kafka" TIMEOUT 240)
  set_tests_properties(e2e.gateway_kafka.${case} PROPERTIES RUN_SERIAL TRUE
                       SKIP_RETURN_CODE 77)
endforeach()
