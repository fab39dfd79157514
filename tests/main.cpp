// Catch2 v2's main(), built once and linked into every test binary.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
