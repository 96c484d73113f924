# Tests of the warehouse's Avro staging files (warehouse/staging.c).
sluice_test(NAME unit.wh_staging SOURCES unit/test_wh_staging.c LIBS sluice_warehouse LABEL unit)
