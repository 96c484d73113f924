# Destination definitions (schemas/destinations/*.json) are compiled into the binary, so the
# processor needs no data files at run time (as cmake/embed_migrations.cmake does for SQL).
# Included from CMakeLists.txt once sluice_processor exists, it adds the generated
# destinations_data.c to that library; run with -P (DIR, OUT set) it writes that file,
# holding pr_desttx_embedded[] sorted by file name.
if(CMAKE_SCRIPT_MODE_FILE)
  file(GLOB files ${DIR}/*.json)
  list(SORT files)
  set(body "/* Generated from schemas/destinations by cmake/embed_destinations.cmake. */\n")
  string(APPEND body "#include \"processor/desttx.h\"\n\n")
  set(table "const pr_desttx_src_t pr_desttx_embedded[] = {\n")
  set(n 0)
  foreach(f ${files})
    get_filename_component(name ${f} NAME)
    file(READ ${f} hex HEX)
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
    string(APPEND body "static const char d${n}[] = {${hex}0x00};\n")
    string(APPEND table "    {\"${name}\", d${n}},\n")
    math(EXPR n "${n} + 1")
  endforeach()
  if(n EQUAL 0)
    string(APPEND table "    {0, 0},\n")
  endif()
  string(APPEND table "};\nconst size_t pr_desttx_embedded_count = ${n};\n")
  file(WRITE ${OUT}.tmp "${body}\n${table}")
  file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
  return()
endif()

file(GLOB SLUICE_DESTINATIONS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/schemas/destinations/*.json)
add_custom_command(
  OUTPUT ${CMAKE_BINARY_DIR}/generated/destinations_data.c
  COMMAND ${CMAKE_COMMAND} -DOUT=${CMAKE_BINARY_DIR}/generated/destinations_data.c
          -DDIR=${CMAKE_SOURCE_DIR}/schemas/destinations
          -P ${CMAKE_SOURCE_DIR}/cmake/embed_destinations.cmake
  DEPENDS ${SLUICE_DESTINATIONS} ${CMAKE_SOURCE_DIR}/cmake/embed_destinations.cmake
  COMMENT "Embedding destination definitions")
target_sources(sluice_processor PRIVATE ${CMAKE_BINARY_DIR}/generated/destinations_data.c)
