// Fencing tokens that strictly increase across the daemon's life and its restarts.
//
// The counter starts at max(stored high-water mark, wall clock in µs). With a state directory,
// tokens are handed out from reserved blocks: before the first token at or above the stored
// mark, the next mark is written durably (temp file, fsync, rename, fsync of the directory),
// so every token ever issued is below the stored mark. See proto/PROTOCOL.md "Fencing tokens".
//
// Runs on the io_context thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "lock_table.hpp"

namespace keylock {

class fencing_tokens final : public token_source {
 public:
  static constexpr std::uint64_t block = 1u << 20;

  // `state_dir` empty: clock-based start only, nothing persisted. `now_us`: wall clock in
  // microseconds since the Unix epoch. `on_error` is told when a later reservation cannot be
  // written (tokens keep increasing within this run; only the restart guarantee weakens to
  // the clock's).
  fencing_tokens(std::string state_dir, std::uint64_t now_us,
                 std::function<void(const std::string&)> on_error = {});

  // Reads the stored mark and reserves the first block. Returns an error message when the
  // state directory is unusable or the stored mark is corrupt (the daemon must not start).
  std::optional<std::string> open();

  std::uint64_t next() override;
  std::uint64_t peek() const { return next_; }

 private:
  std::optional<std::string> store_mark(std::uint64_t mark);

  std::string state_dir_;
  std::uint64_t next_;
  std::uint64_t mark_ = 0;  // tokens below this are covered by the stored reservation
  std::function<void(const std::string&)> on_error_;
};

}  // namespace keylock
