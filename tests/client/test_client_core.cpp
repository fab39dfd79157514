// The C++ client's pure pieces, without sockets: frame reader, deadline queue, backoff.
#include "core/backoff.hpp"
#include "core/deadline_queue.hpp"
#include "core/frame_reader.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <random>
#include <string>
#include <vector>

using keylock::detail::backoff;
using keylock::detail::deadline_queue;
using keylock::detail::frame_reader;
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
