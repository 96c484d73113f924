# Tracing (common/trace.c: W3C traceparent / tracestate) and its end-to-end propagation from
# the gateway to the destination, with the stage times `sluice status` shows.
sluice_test(NAME unit.trace SOURCES unit/test_trace.c)
sluice_py_test(NAME e2e.ops.trace SCRIPT e2e/test_trace.py FIXTURES "postgres;kafka" TIMEOUT 120)
