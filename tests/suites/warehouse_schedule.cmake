# Unit tests of the warehouse's sync schedule: syncStartAt + k x syncFrequency (warehouse/schedule.c).
sluice_test(NAME unit.wh_schedule SOURCES unit/test_wh_schedule.c LIBS sluice_warehouse LABEL unit)
