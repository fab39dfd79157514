// Fencing tokens: strictly increasing within a run and across restarts.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

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

// Plays the server's part: issues `n` tokens (while ready), running each due reservation at
// once, as the background thread would. Returns the last token issued (0 if none).
std::uint64_t issue(fencing_tokens& t, std::uint64_t n) {
  std::uint64_t last = 0;
  for (std::uint64_t i = 0; i < n && t.ready(); ++i) {
    last = t.next();
    if (auto mark = t.reservation_due()) {
      t.reservation_started();
      t.reservation_done(*mark, t.write(*mark));
    }
  }
  return last;
}

// A writer that records what it made durable and can be told to fail, like a full disk.
struct fake_disk {
  std::uint64_t stored = 0;
  bool failing = false;
  int writes = 0;
  fencing_tokens::mark_writer writer() {
    return [this](std::uint64_t mark) -> std::optional<std::string> {
      ++writes;
      if (failing) return std::string("No space left on device");
      stored = mark;
      return std::nullopt;
    };
  }
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
    fencing_tokens t(dir.path.string(), 5'000'000, 64);
    REQUIRE_FALSE(t.open().has_value());
    // Cross several block boundaries so that later reservations are written too.
    last = issue(t, 64 * 5 + 10);
    REQUIRE(t.ready());
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

TEST_CASE("the next block is reserved when half of the current one is used, not before",
          "[fencing]") {
  fake_disk disk;
  fencing_tokens t("/unused", 1000, 64, disk.writer());
  REQUIRE_FALSE(t.open().has_value());
  REQUIRE(disk.stored == 1064);
  for (int i = 0; i < 31; ++i) t.next();
  REQUIRE_FALSE(t.reservation_due().has_value());
  t.next();  // 32 of 64 used
  REQUIRE(t.reservation_due() == std::optional<std::uint64_t>(1128));
  t.reservation_started();
  REQUIRE_FALSE(t.reservation_due().has_value());  // one write in flight at a time
  t.reservation_done(1128, std::nullopt);
  REQUIRE(t.durable_mark() == 1128);
}

TEST_CASE("when a reservation fails no token at or above the stored mark is issued, and tokens "
          "resume once a write succeeds",
          "[fencing]") {
  fake_disk disk;
  fencing_tokens t("/unused", 1000, 64, disk.writer());
  REQUIRE_FALSE(t.open().has_value());
  disk.failing = true;
  std::uint64_t issued = 0;
  std::uint64_t highest = 0;
  for (int i = 0; i < 1000 && t.ready(); ++i) {
    highest = t.next();
    ++issued;
    REQUIRE(highest < disk.stored);
    if (auto mark = t.reservation_due()) {
      t.reservation_started();
      t.reservation_done(*mark, t.write(*mark));
      REQUIRE(t.error() == "No space left on device");
    }
  }
  // The first block is all there is: the reservation ahead failed every time it was tried.
  REQUIRE_FALSE(t.ready());
  REQUIRE(issued == 64);
  REQUIRE(highest == disk.stored - 1);
  REQUIRE(disk.writes > 1);

  disk.failing = false;  // the disk recovered: the next retry succeeds
  auto mark = t.reservation_due();
  REQUIRE(mark.has_value());
  t.reservation_started();
  t.reservation_done(*mark, t.write(*mark));
  REQUIRE(t.error().empty());
  REQUIRE(t.ready());
  std::uint64_t after = t.next();
  REQUIRE(after > highest);
  REQUIRE(after < disk.stored);
}

TEST_CASE("a reservation that cannot replace the state file fails and leaves the stored mark",
          "[fencing]") {
  temp_dir dir;
  fencing_tokens t(dir.path.string(), 1000, 64);
  REQUIRE_FALSE(t.open().has_value());
  // A directory where the temporary file must go: open() fails even for root.
  std::filesystem::create_directory(dir.path / "fencing.tmp");
  auto err = write_fencing_mark(dir.path.string(), 999'999);
  REQUIRE(err.has_value());
  REQUIRE(err->find("fencing.tmp") != std::string::npos);
  std::ifstream in(dir.path / "fencing");
  std::uint64_t stored = 0;
  in >> stored;
  REQUIRE(stored == 1064);
}
