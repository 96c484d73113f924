# Unit tests of the core helpers in common/: options, buffers, time and UUIDs.
sluice_test(NAME unit.conf SOURCES unit/test_conf.c)
sluice_test(NAME unit.util SOURCES unit/test_util.c)
