# Unit tests of the warehouse's rows from events: tables, columns, naming rules, type inference
# and conversions (warehouse/schema.c).
sluice_test(NAME unit.wh_schema SOURCES unit/test_wh_schema.c LIBS sluice_warehouse)
