# Tests of the Postgres warehouse loader (warehouse/pgload.c) against the real test Postgres.
sluice_test(NAME integration.wh_pgload SOURCES integration/test_wh_pgload.c LIBS sluice_warehouse
            LABEL integration FIXTURES postgres TIMEOUT 180)
