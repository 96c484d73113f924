# Tests of consumer lag (common/lag.c, cmd/lag.c, the roles' lag gauges).
sluice_test(NAME unit.lag SOURCES unit/test_lag.c)
sluice_py_test(NAME e2e.ops.lag SCRIPT e2e/test_lag.py ARGS --kafka real FIXTURES "postgres;kafka"
               TIMEOUT 180)
sluice_py_test(NAME e2e.ops.lag.embedded SCRIPT e2e/test_lag.py ARGS --kafka embedded
               FIXTURES postgres TIMEOUT 120)
sluice_test(NAME integration.lag.flap SOURCES integration/test_lag_flap.c LABEL integration
            TIMEOUT 180)
