// Fencing tokens that strictly increase across the daemon's life and its restarts.
//
// The counter starts at max(stored high-water mark, wall clock in µs). With a state directory,
// tokens are handed out from reserved blocks: every token issued is below the mark stored
// durably in STATE_DIR/fencing (temp file, fsync, rename, fsync of the directory), so a
// restart starts above all of them. See proto/PROTOCOL.md "Fencing tokens".
//
// The next block is reserved ahead of need, when half of the current one is used, and the
// write runs off the event loop: the server asks reservation_due(), runs write() on its
// background thread and reports the outcome with reservation_done(). If the current block is
// used up before a reservation has become durable, ready() is false and next() must not be
// called: the daemon then grants nothing (acquire answers `unavailable`) until a retry
// succeeds. A failed write never advances the durable mark.
//
// Runs on the io_context thread only, except write(), which touches nothing of the object but
// the state directory's path and may run on any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "lock_table.hpp"

namespace keylock {

class fencing_tokens final : public token_source {
 public:
  static constexpr std::uint64_t default_block = 1u << 20;

  // Writes `mark` durably, or returns why it could not. Injected by tests; the default writes
  // STATE_DIR/fencing as described above and fails on any failed step.
  using mark_writer = std::function<std::optional<std::string>(std::uint64_t mark)>;

  // `state_dir` empty: clock-based start only, nothing persisted, always ready. `now_us`: wall
  // clock in microseconds since the Unix epoch. `block`: tokens per reservation (>= 2).
  fencing_tokens(std::string state_dir, std::uint64_t now_us, std::uint64_t block = default_block,
                 mark_writer writer = {});

  // Reads the stored mark and reserves the first block, synchronously (start-up). Returns an
  // error message when the state directory is unusable, the stored mark is corrupt or the
  // first reservation fails (the daemon must not start).
  std::optional<std::string> open();

  // True when the next token is below the durable mark (always, without a state directory).
  bool ready() const override { return state_dir_.empty() || next_ < mark_; }
  // The next token. Precondition: ready().
  std::uint64_t next() override { return next_++; }
  std::uint64_t peek() const { return next_; }
  // Every token issued so far is below this (durable) mark; 0 without a state directory.
  std::uint64_t durable_mark() const { return mark_; }

  // The mark to reserve now, if a reservation is due: a state directory is set, none is in
  // flight, and at least half of the current block is used (or all of it).
  std::optional<std::uint64_t> reservation_due() const;
  // The server started writing `mark` (from reservation_due()).
  void reservation_started() { in_flight_ = true; }
  // The write of `mark` finished: on success the durable mark advances to it and error() is
  // cleared; on failure error() says why and the mark stays where it was.
  void reservation_done(std::uint64_t mark, const std::optional<std::string>& error);
  // Writes `mark` with the writer. Thread-safe with respect to this object's other members.
  std::optional<std::string> write(std::uint64_t mark) const { return writer_(mark); }

  // The last reservation failure, or empty when the last reservation succeeded.
  const std::string& error() const { return error_; }

 private:
  std::string state_dir_;
  std::uint64_t next_;
  std::uint64_t block_;
  std::uint64_t mark_ = 0;  // tokens below this are covered by the stored reservation
  bool in_flight_ = false;
  std::string error_;
  mark_writer writer_;
};

// The default mark_writer's work: writes `mark` to DIR/fencing through DIR/fencing.tmp, with an
// fsync of the file and of the directory. Returns why a step failed, or nullopt.
std::optional<std::string> write_fencing_mark(const std::string& dir, std::uint64_t mark);

}  // namespace keylock
