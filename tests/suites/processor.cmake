# Processor end-to-end tests: selection rules, dead letters, dedup, exactly-once, a restart on
# the dev broker, a failed commit.
sluice_py_test(NAME e2e.processor.rules SCRIPT e2e/test_processor.py ARGS --case rules
               FIXTURES postgres TIMEOUT 120)
sluice_py_test(NAME e2e.processor.transform SCRIPT e2e/test_processor.py ARGS --case transform
               FIXTURES postgres TIMEOUT 120)
sluice_py_test(NAME e2e.processor.dedup SCRIPT e2e/test_processor.py ARGS --case dedup
               FIXTURES "postgres;kafka" TIMEOUT 120)
sluice_py_test(NAME e2e.processor.exactly-once SCRIPT e2e/test_processor.py
               ARGS --case exactly-once FIXTURES "postgres;kafka" TIMEOUT 240)
sluice_py_test(NAME e2e.processor.dev-restart SCRIPT e2e/test_processor.py
               ARGS --case dev-restart FIXTURES postgres TIMEOUT 120)
sluice_py_test(NAME e2e.processor.commit-fails SCRIPT e2e/test_processor.py
               ARGS --case commit-fails FIXTURES postgres TIMEOUT 120)
