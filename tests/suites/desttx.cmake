# Unit tests of the destination transformation engine (processor/desttx.c) and the
# definitions in schemas/destinations/.
sluice_test(NAME unit.desttx SOURCES unit/test_desttx.c LIBS sluice_processor)
