# End-to-end tests: the sluice binary as a user runs it, talked to over HTTP.
sluice_py_test(NAME e2e.pipeline.real SCRIPT e2e/test_pipeline.py ARGS --kafka real
               FIXTURES "postgres;kafka")
sluice_py_test(NAME e2e.pipeline.embedded SCRIPT e2e/test_pipeline.py ARGS --kafka embedded
               FIXTURES postgres)
sluice_py_test(NAME e2e.drain SCRIPT e2e/test_drain.py FIXTURES "postgres;kafka")
foreach(case workspace postgres kafka kafka_idle oneshot)
  sluice_py_test(NAME e2e.failures.${case} SCRIPT e2e/test_failures.py ARGS --case ${case}
                 FIXTURES postgres)
endforeach()
foreach(case url sighup lastgood)
  sluice_py_test(NAME e2e.workspace_config.${case} SCRIPT e2e/test_workspace_config.py
                 ARGS --case ${case} FIXTURES postgres)
endforeach()
sluice_py_test(NAME e2e.ops.rolling_restart SCRIPT e2e/test_rolling.py FIXTURES "postgres;kafka")
# Operations: each role's /metrics by source, destination and reason; the dashboard's metrics.
sluice_py_test(NAME e2e.ops.metrics SCRIPT e2e/test_ops_metrics.py FIXTURES "postgres;kafka"
               TIMEOUT 120)
