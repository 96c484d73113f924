# Operations commands against the real Kafka, with Kafka's own tools as the reference:
# `sluice offsets` (cmd/offsets.c) and `sluice topics` (cmd/topics.c). One case per entry.
foreach(case time position refuse topics)
  sluice_test(NAME e2e.ops.${case} SOURCES integration/test_ops.c TARGET e2e_ops ARGS ${case}
              LABEL e2e FIXTURES kafka TIMEOUT 120)
endforeach()
sluice_test(NAME e2e.ops.devbroker SOURCES integration/test_ops.c TARGET e2e_ops ARGS devbroker
            LABEL e2e TIMEOUT 60)
