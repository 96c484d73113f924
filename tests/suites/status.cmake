# Tests of job status in Postgres (router/status.c) and of `sluice status` (cmd/status.c).
sluice_test(NAME integration.status SOURCES integration/test_status.c LIBS sluice_router
            LABEL integration FIXTURES postgres)
sluice_py_test(NAME e2e.status SCRIPT e2e/test_status.py FIXTURES postgres TIMEOUT 120)
