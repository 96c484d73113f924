# Tests of the router role (router/) and of `sluice dev-sink` (cmd/dev_sink.c).
sluice_test(NAME integration.router SOURCES integration/test_router.c LIBS sluice_router
            LABEL integration FIXTURES postgres TIMEOUT 300)
sluice_py_test(NAME e2e.sink SCRIPT e2e/test_sink.py TIMEOUT 120)
