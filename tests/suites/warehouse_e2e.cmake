# Warehouse end-to-end tests (issue 6): gateway -> processor -> `sluice warehouse` on the real
# Kafka, loading into a second database of the test Postgres. One ctest per case, each
# under ~40 s.
foreach(case types evolve crash takeover commands badevents options orphans bytecap)
  sluice_py_test(NAME e2e.warehouse.${case} SCRIPT e2e/test_warehouse.py ARGS --case ${case}
                 FIXTURES "postgres;kafka" TIMEOUT 120)
endforeach()
