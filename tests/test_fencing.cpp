// Fencing tokens: strictly increasing within a run and across restarts.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fencing.hpp"

using namespace keylock;

namespace {

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string templ = (std::filesystem::temp_directory_path() / "keylock-test-XXXXXX").string();
    REQUIRE(::mkdtemp(templ.data()) != nullptr);
    path = templ;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST_CASE("tokens strictly increase within a run", "[fencing]") {
  fencing_tokens t("", 1000);
  REQUIRE_FALSE(t.open().has_value());
  std::uint64_t prev = t.next();
  for (int i = 0; i < 1000; ++i) {
    std::uint64_t n = t.next();
    REQUIRE(n > prev);
    prev = n;
  }
}

TEST_CASE("with a state dir a restart starts above every token issued, even if the clock went back",
          "[fencing]") {
  temp_dir dir;
  std::uint64_t last = 0;
  {
    fencing_tokens t(dir.path.string(), 5'000'000);
    REQUIRE_FALSE(t.open().has_value());
    // Cross a block boundary so that a second reservation is written.
    for (std::uint64_t i = 0; i < fencing_tokens::block + 10; ++i) last = t.next();
  }
  fencing_tokens again(dir.path.string(), 1);  // clock stepped far back
  REQUIRE_FALSE(again.open().has_value());
  REQUIRE(again.next() > last);
}

TEST_CASE("without a state dir the clock is the floor", "[fencing]") {
  fencing_tokens t("", 123'456'789);
  REQUIRE_FALSE(t.open().has_value());
  REQUIRE(t.next() >= 123'456'789);
}

TEST_CASE("a corrupt state file refuses to start", "[fencing]") {
  temp_dir dir;
  std::ofstream(dir.path / "fencing") << "not a number\n";
  fencing_tokens t(dir.path.string(), 1000);
  auto err = t.open();
  REQUIRE(err.has_value());
  REQUIRE(err->find("corrupt") != std::string::npos);
}
