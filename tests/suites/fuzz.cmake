# Corpus regression tests: each fuzz target (tests/fuzz/) replays its committed corpus
# (tests/fuzz/corpus/<target>/) through LLVMFuzzerTestOneInput, linked with a small main
# instead of libFuzzer, so the normal and the ASan+UBSan builds check every invariant on every
# known-bad input. The fuzzers themselves are built with -DSLUICE_FUZZ=ON (scripts/test).
foreach(t json_scan ingest params client_ip)
  sluice_test(NAME unit.fuzz_corpus.${t} SOURCES fuzz/fuzz_${t}.c fuzz/corpus_main.c
              LIBS sluice_gateway ARGS ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${t})
endforeach()
