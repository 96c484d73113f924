# Unit tests of the gateway's scanner and enrichment (common/json_scan.c, gateway/ingest.c).
sluice_test(NAME unit.ingest SOURCES unit/test_ingest.c LIBS sluice_gateway)
