# Gateway end-to-end tests: a real SDK against the gateway, and the gateway when Kafka is
# taken away.
sluice_py_test(NAME e2e.sdk_node SCRIPT e2e/test_sdk_node.py FIXTURES "postgres;kafka"
               TIMEOUT 400)
