# Unit tests of the processor's selection rules, timestamp correction and dedup window.
sluice_test(NAME unit.select SOURCES unit/test_select.c LIBS sluice_processor)
