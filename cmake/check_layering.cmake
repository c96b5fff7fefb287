# The `layering` test (CMakeLists.txt): every component's include view against the dependency table.
# For each pair (A, B) it compiles `__has_include("<a header of B>")` with A's view as the only include
# root: the header must be visible exactly when B is A itself or one of A's (transitive) dependencies.
# The views cannot see an include relative to the including file's own folder ("cuda/x.h" from
# src/backend, "../train/x.h"), so every quoted include in src/ must also start with a top-level folder
# of src/ and contain no "..".
# Inputs: CXX (compiler), TABLE (layering_table.cmake, written at configure time), WORK (scratch dir),
# SRC (the src/ folder).
cmake_minimum_required(VERSION 3.25)
include(${TABLE})
file(MAKE_DIRECTORY ${WORK})
set(probe ${WORK}/probe.cpp)
file(WRITE ${probe} "#if !__has_include(ESM2_PROBE_HEADER)\n#error not visible\n#endif\n")
set(errors "")
set(checked 0)
foreach(a ${COMPONENTS})
  foreach(b ${COMPONENTS})
    execute_process(COMMAND ${CXX} -std=c++20 -fsyntax-only -I${VIEW_${a}}
                            "-DESM2_PROBE_HEADER=\"${HEADER_${b}}\"" ${probe}
                    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
    if(b IN_LIST CLOSURE_${a})
      set(want 0)
    else()
      set(want 1)
    endif()
    if(rc EQUAL 0)
      set(got 0)
    else()
      set(got 1)
    endif()
    if(NOT got EQUAL want)
      if(want)
        string(APPEND errors "  ${a} can include ${HEADER_${b}} but may not use ${b}\n")
      else()
        string(APPEND errors "  ${a} cannot include ${HEADER_${b}} though it may use ${b}\n")
      endif()
    endif()
    math(EXPR checked "${checked} + 1")
  endforeach()
endforeach()
file(GLOB top RELATIVE ${SRC} LIST_DIRECTORIES true ${SRC}/*)
list(JOIN top "|" top)
file(GLOB_RECURSE sources ${SRC}/*.h ${SRC}/*.cpp ${SRC}/*.cu ${SRC}/*.cuh)
set(includes 0)
foreach(f ${sources})
  file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
  foreach(line ${lines})
    math(EXPR includes "${includes} + 1")
    if(NOT line MATCHES "include[ \t]*\"(${top})/[^\"]*\"" OR line MATCHES "include[ \t]*\"[^\"]*\\.\\.")
      file(RELATIVE_PATH rel ${SRC} ${f})
      string(APPEND errors "  src/${rel}: ${line} (not rooted at a component folder)\n")
    endif()
  endforeach()
endforeach()
if(errors)
  message(FATAL_ERROR "the includes disagree with the dependency table (docs/architecture.md):\n${errors}")
endif()
message(STATUS "layering: ${checked} component pairs agree with the dependency table; "
               "${includes} includes in src/ rooted at a component folder")
