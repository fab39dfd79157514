// bench_json_check FILE [RESULTS] [--ratios] [--allow-errors]: exits 0 when FILE holds valid
// `keylock-bench --json` output with RESULTS results and no violations; else prints why and
// exits 1. Used by smoke.sh.
#include "json_check.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_json_check FILE [RESULTS] [--ratios] [--allow-errors]\n");
    return 2;
  }
  keylock::bench::test::json_expectations want;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--ratios") {
      want.ratios = true;
    } else if (a == "--allow-errors") {
      want.no_errors = false;
    } else {
      want.results = static_cast<std::size_t>(std::strtoul(a.c_str(), nullptr, 10));
    }
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::fprintf(stderr, "bench_json_check: cannot read %s\n", argv[1]);
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string problem = keylock::bench::test::check_bench_json(ss.str(), want);
  if (!problem.empty()) {
    std::fprintf(stderr, "bench_json_check: %s: %s\n", argv[1], problem.c_str());
    return 1;
  }
  return 0;
}
