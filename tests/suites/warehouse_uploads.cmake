# Upload bookkeeping of the warehouse role (warehouse/uploads.c) against the test Postgres.
sluice_test(NAME integration.wh_uploads SOURCES integration/test_wh_uploads.c
            LIBS sluice_warehouse LABEL integration FIXTURES postgres)
