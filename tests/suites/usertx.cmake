# User transformations (processor/usertx.c, processor/jsworker.c). The workers are the sluice
# binary (SLUICE_BIN in the test environment), so it is built before the test.
sluice_test(NAME unit.usertx SOURCES unit/test_usertx.c LIBS sluice_processor TIMEOUT 180)
add_dependencies(unit_usertx sluice)

# The benchmark: sluice-usertx-bench --sluice <build>/sluice prints events/s (tests/bench).
add_executable(sluice-usertx-bench ${CMAKE_SOURCE_DIR}/tests/bench/usertx_bench.c)
target_link_libraries(sluice-usertx-bench PRIVATE sluice_processor)
