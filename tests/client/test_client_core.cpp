// The C++ client's pure pieces, without sockets: frame reader, call table (the request
// multiplexer), lease book (the lease and renewal manager), deadline queue, backoff.
#include "core/backoff.hpp"
#include "core/call_table.hpp"
#include "core/deadline_queue.hpp"
#include "core/frame_reader.hpp"
#include "core/lease_book.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

using keylock::detail::backoff;
using keylock::detail::call_state;
using keylock::detail::call_table;
using keylock::detail::deadline_queue;
using keylock::detail::drop_outcome;
using keylock::detail::extend_verdict;
using keylock::detail::frame_reader;
using keylock::detail::judge_extend;
using keylock::detail::lease_book;
using std::chrono::milliseconds;

namespace {

std::vector<std::string> drain(frame_reader& r) {
  std::vector<std::string> out;
  while (const auto f = r.next()) out.emplace_back(*f);
  return out;
}

// A clock only for its time_point type: the queue never reads it.
struct fake_clock {
  using duration = milliseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<fake_clock>;
};

fake_clock::time_point at(int ms) { return fake_clock::time_point(milliseconds(ms)); }

}  // namespace

TEST_CASE("frame_reader splits frames across reads, strips CR and skips empty lines",
          "[client][core]") {
  frame_reader r(64);
  const std::string a = "{\"id\":1}\r\n\n{\"id\"";
  r.append(a.data(), a.size());
  CHECK(drain(r) == std::vector<std::string>{"{\"id\":1}"});
  CHECK(r.buffered() == 5);  // the partial frame stays for the next read
  const std::string b = ":2}\n{\"id\":3}\n";
  r.append(b.data(), b.size());
  CHECK(drain(r) == std::vector<std::string>{"{\"id\":2}", "{\"id\":3}"});
  CHECK(r.buffered() == 0);
  CHECK_FALSE(r.overflowed());
}

TEST_CASE("frame_reader reports a partial frame longer than its limit, not a complete one",
          "[client][core]") {
  frame_reader r(8);
  const std::string whole = std::string(20, 'x') + "\n";
  r.append(whole.data(), whole.size());
  CHECK(drain(r) == std::vector<std::string>{std::string(20, 'x')});
  CHECK_FALSE(r.overflowed());  // a long frame that ended is the decoder's business

  const std::string part(9, 'y');
  r.append(part.data(), part.size());
  CHECK(drain(r).empty());
  CHECK(r.overflowed());
  r.clear();
  CHECK_FALSE(r.overflowed());
  CHECK(r.buffered() == 0);
}

TEST_CASE("deadline_queue pops due entries in time order, ties in insertion order",
          "[client][core]") {
  deadline_queue<int, fake_clock> q;
  q.add(at(30), 3);
  q.add(at(10), 1);
  q.add(at(10), 2);
  q.add(at(50), 5);
  REQUIRE(q.earliest() == at(10));
  CHECK_FALSE(q.pop_due(at(9)).has_value());
  std::vector<int> fired;
  while (const auto e = q.pop_due(at(30))) fired.push_back(*e);
  CHECK(fired == std::vector<int>{1, 2, 3});
  CHECK(q.earliest() == at(50));
  CHECK(q.size() == 1);
}

TEST_CASE("deadline_queue cancels through a handle once, and an empty handle is a no-op",
          "[client][core]") {
  deadline_queue<int, fake_clock> q;
  deadline_queue<int, fake_clock>::handle renew = q.add(at(10), 1);
  deadline_queue<int, fake_clock>::handle none;
  q.add(at(20), 2);
  q.cancel(renew);
  CHECK_FALSE(renew.has_value());
  q.cancel(renew);  // twice: nothing more happens
  q.cancel(none);
  CHECK(q.size() == 1);
  CHECK(q.earliest() == at(20));
  CHECK(q.pop_due(at(100)) == 2);
  CHECK(q.empty());
  CHECK_FALSE(q.earliest().has_value());
}

TEST_CASE("backoff draws from the upper half of a doubling ceiling, capped, and resets",
          "[client][core]") {
  std::mt19937 engine(1234);
  backoff b(milliseconds(100), milliseconds(1000));
  const std::vector<int> ceilings{100, 200, 400, 800, 1000, 1000};
  for (const int ceiling : ceilings) {
    const auto d = b.next(engine);
    INFO("ceiling " << ceiling << " ms, drew " << d.count() << " ms");
    CHECK(d >= milliseconds(ceiling / 2));
    CHECK(d <= milliseconds(ceiling));
  }
  b.reset();
  const auto first = b.next(engine);
  CHECK(first >= milliseconds(50));
  CHECK(first <= milliseconds(100));
}

namespace {

// What call_table needs of a call (client.cpp's pending has much more).
struct fake_call {
  enum class kind { acquire, release, extend, ping } k = kind::ping;
  bool waiting = true;  // a caller waits for it
  call_state state = call_state::queued;
  std::optional<fake_clock::time_point> wait_until;
  std::string name;

  bool user() const { return waiting; }
  bool is_acquire() const { return k == kind::acquire; }
  bool is_release() const { return k == kind::release; }
  bool is_extend() const { return k == kind::extend; }
};

using table = call_table<fake_call, fake_clock>;

std::uint64_t add(table& t, fake_call c, bool sent) {
  auto [id, call] = t.add();
  call = std::move(c);
  if (sent) {
    call.state = call_state::sent;
  } else {
    t.queue(id);
  }
  return id;
}

}  // namespace

TEST_CASE("call_table numbers calls and sends the queued ones in order when they may go",
          "[client][core]") {
  table t;
  const auto a = add(t, {fake_call::kind::acquire, true, {}, {}, "a"}, false);
  const auto p = add(t, {fake_call::kind::ping, true, {}, {}, "p"}, false);
  const auto b = add(t, {fake_call::kind::acquire, true, {}, {}, "b"}, false);
  CHECK(a == 1);
  CHECK(p == 2);
  CHECK(b == 3);
  CHECK(t.take_id() == 4);  // a noreply release's id: no call kept
  CHECK(t.queued() == 3);
  // Draining: only non-acquires may go; the acquires stay queued, in order.
  std::vector<std::string> sent;
  auto send = [&](std::uint64_t, fake_call& c) {
    c.state = call_state::sent;
    sent.push_back(c.name);
  };
  t.pump([](const fake_call& c) { return !c.is_acquire(); }, send);
  CHECK(sent == std::vector<std::string>{"p"});
  t.pump([](const fake_call&) { return true; }, send);
  CHECK(sent == std::vector<std::string>{"p", "a", "b"});
  CHECK(t.queued() == 0);
  // An answer takes its call out once; a second answer to the same id finds nothing.
  REQUIRE(t.take(p));
  CHECK_FALSE(t.take(p));
  CHECK(t.find(p) == nullptr);
  CHECK(t.size() == 2);
}

TEST_CASE("call_table after a drop resends acquires with wait left and settles the rest",
          "[client][core]") {
  using kind = fake_call::kind;
  const fake_clock::time_point t0{};
  table t;
  add(t, {kind::release, true, {}, {}, "release"}, true);
  add(t, {kind::acquire, true, {}, {}, "no-wait"}, true);
  add(t, {kind::acquire, true, {}, t0 + milliseconds(10), "wait-over"}, true);
  add(t, {kind::acquire, true, {}, t0 + milliseconds(30), "wait-left"}, true);
  add(t, {kind::extend, true, {}, {}, "extend"}, true);
  add(t, {kind::ping, true, {}, {}, "ping"}, true);
  add(t, {kind::extend, false, {}, {}, "renewal"}, true);
  add(t, {kind::acquire, false, {}, {}, "abandoned"}, true);
  add(t, {kind::extend, false, {}, {}, "queued-renewal"}, false);
  std::vector<std::pair<std::string, drop_outcome>> seen;
  t.after_drop(t0 + milliseconds(20),
               [&](std::uint64_t, fake_call& c, drop_outcome o) { seen.emplace_back(c.name, o); });
  const std::vector<std::pair<std::string, drop_outcome>> expected{
      {"release", drop_outcome::released},      {"no-wait", drop_outcome::resend},
      {"wait-over", drop_outcome::wait_over},   {"wait-left", drop_outcome::resend},
      {"extend", drop_outcome::lease_lost},     {"ping", drop_outcome::failed},
      {"renewal", drop_outcome::forgotten},     {"abandoned", drop_outcome::forgotten},
      {"queued-renewal", drop_outcome::resend},
  };
  CHECK(seen == expected);
  // Only the resent stay, queued in submission order.
  CHECK(t.size() == 3);
  std::vector<std::string> order;
  t.pump([](const fake_call&) { return true; },
         [&](std::uint64_t, fake_call& c) { order.push_back(c.name); });
  CHECK(order == std::vector<std::string>{"no-wait", "wait-left", "queued-renewal"});
}

TEST_CASE("call_table finds calls by a predicate, in submission order, and clears",
          "[client][core]") {
  using kind = fake_call::kind;
  table t;
  add(t, {kind::acquire, true, {}, {}, "q1"}, false);
  add(t, {kind::acquire, true, {}, {}, "s"}, true);
  add(t, {kind::ping, true, {}, {}, "p"}, false);
  add(t, {kind::acquire, true, {}, {}, "q2"}, false);
  CHECK(t.ids_where([](const fake_call& c) {
    return c.is_acquire() && c.state == call_state::queued;
  }) == std::vector<std::uint64_t>{1, 4});
  CHECK(t.any_of([](const fake_call& c) { return c.state == call_state::sent; }));
  std::vector<std::string> cleared;
  t.clear([&](std::uint64_t, fake_call& c) { cleared.push_back(c.name); });
  CHECK(cleared == std::vector<std::string>{"q1", "s", "p", "q2"});
  CHECK(t.empty());
  CHECK(t.queued() == 0);
}

TEST_CASE(
    "an extend's answer: confirmed, reported and kept, or released and lost, never "
    "forgotten while held",
    "[client][core]") {
  CHECK(judge_extend(true, false, true) == extend_verdict::confirmed);
  CHECK(judge_extend(true, false, false) == extend_verdict::confirmed);
  // not_held: the daemon let it go, whoever asked.
  CHECK(judge_extend(false, true, true) == extend_verdict::lose);
  CHECK(judge_extend(false, true, false) == extend_verdict::lose);
  // Another refusal (a ttl above max_ttl_ms): the caller hears it and keeps the lease; a
  // renewal refused so ends the lease on the daemon before it is lost here.
  CHECK(judge_extend(false, false, true) == extend_verdict::refused_kept);
  CHECK(judge_extend(false, false, false) == extend_verdict::release_and_lose);
}

TEST_CASE("a confirmed lease runs out at its ttl and is renewed at a third of it",
          "[client][core]") {
  using keylock::detail::plan;
  const auto p = plan<fake_clock>(at(1000), milliseconds(30000), true, false);
  CHECK(p.expires_at == at(31000));
  REQUIRE(p.renew_at);
  CHECK(*p.renew_at == at(11000));
  // No renewal planned without auto_extend, or while one is in flight.
  CHECK_FALSE(plan<fake_clock>(at(0), milliseconds(300), false, false).renew_at);
  CHECK_FALSE(plan<fake_clock>(at(0), milliseconds(300), true, true).renew_at);
  // A tiny ttl is still renewed at least 1 ms later, never at once.
  CHECK(*plan<fake_clock>(at(0), milliseconds(2), true, false).renew_at == at(1));
}

TEST_CASE("lease_book finds leases by token and hands out a snapshot in token order",
          "[client][core]") {
  struct lease {
    std::uint64_t token;
  };
  lease_book<lease> book;
  CHECK(book.empty());
  book.add(std::make_shared<lease>(lease{30}));
  book.add(std::make_shared<lease>(lease{10}));
  book.add(std::make_shared<lease>(lease{20}));
  REQUIRE(book.find(20));
  CHECK(book.find(20)->token == 20);
  CHECK_FALSE(book.find(99));
  std::vector<std::uint64_t> tokens;
  for (const auto& l : book.snapshot()) {
    tokens.push_back(l->token);
    book.erase(l->token);  // changing the book while walking its snapshot is safe
  }
  CHECK(tokens == std::vector<std::uint64_t>{10, 20, 30});
  CHECK(book.empty());
}
