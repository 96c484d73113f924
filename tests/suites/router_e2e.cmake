# Router end-to-end tests (issue 5): `sluice router` as its own process on the real Kafka,
# with `sluice dev-sink` destinations. One ctest per case, each a few seconds to ~40 s.
foreach(case retry order isolation restart throttle status batch workers rebalance)
  sluice_py_test(NAME e2e.router.${case} SCRIPT e2e/test_router.py ARGS --case ${case}
                 FIXTURES "postgres;kafka" TIMEOUT 120)
endforeach()
# `sluice status` (cmd/status.c) may not be in the build yet: the case exits 77 then.
set_tests_properties(e2e.router.status PROPERTIES SKIP_RETURN_CODE 77)
