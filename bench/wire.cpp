#include "wire.hpp"

#include <algorithm>
#include <array>
#include <charconv>

namespace keylock::bench {

namespace {

void append_uint(std::string& out, std::uint64_t v) {
  std::array<char, 20> digits{};
  const auto end = std::to_chars(digits.data(), digits.data() + digits.size(), v).ptr;
  out.append(digits.data(), end);
}

constexpr std::string_view hex_digits = "0123456789abcdef";

void append_key(std::string& out, std::string_view key) {
  out += '"';
  for (char ch : key) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += hex_digits[c >> 4];
      out += hex_digits[c & 0xf];
    } else {
      out += ch;
    }
  }
  out += '"';
}

// Parses the decimal digits at `pos` (stopping at the first non-digit). False when none.
bool parse_uint_at(std::string_view s, std::size_t pos, std::uint64_t& v) noexcept {
  if (pos >= s.size()) return false;
  auto [ptr, ec] = std::from_chars(s.data() + pos, s.data() + s.size(), v);
  return ec == std::errc{} && ptr != s.data() + pos;
}

// The members after the key(s) of an acquire, and its end.
void append_acquire_tail(std::string& out, std::uint32_t ttl_ms,
                         std::optional<std::uint32_t> wait_ms, std::uint32_t limit,
                         keylock::lock_mode mode) {
  out += R"(,"ttl_ms":)";
  append_uint(out, ttl_ms);
  if (wait_ms) {
    out += R"(,"wait_ms":)";
    append_uint(out, *wait_ms);
  }
  out += R"(,"limit":)";
  append_uint(out, limit);
  if (mode == keylock::lock_mode::shared) out += R"(,"mode":"shared")";
  out += "}\n";
}

}  // namespace

std::string_view to_string(target_kind kind) noexcept {
  switch (kind) {
    case target_kind::keylock:
      return "keylock";
    case target_kind::redis:
      return "redis";
    case target_kind::etcd:
      return "etcd";
  }
  return "?";
}

namespace {

// One HOST:PORT of a target URL into `out`; false with `error` set when malformed.
bool parse_endpoint(std::string_view rest, const std::string& url, endpoint& out,
                    std::string& error);

}  // namespace

std::optional<target> parse_target(std::string_view url, std::string& error) {
  target t;
  t.url = std::string(url);
  std::string_view rest;
  struct scheme {
    std::string_view prefix;
    target_kind kind;
    bool tls;
  };
  static constexpr std::array<scheme, 5> schemes{{{"keylock://", target_kind::keylock, false},
                                                  {"keylocks://", target_kind::keylock, true},
                                                  {"redis://", target_kind::redis, false},
                                                  {"rediss://", target_kind::redis, true},
                                                  {"etcd://", target_kind::etcd, false}}};
  const auto* found = std::find_if(schemes.begin(), schemes.end(),
                                   [url](const scheme& s) { return url.starts_with(s.prefix); });
  if (found == schemes.end()) {
    error = "target must start with keylock://, keylocks://, redis://, rediss:// or etcd://: '" +
            std::string(url.substr(0, 64)) + "'";
    return std::nullopt;
  }
  t.kind = found->kind;
  t.tls = found->tls;
  rest = url.substr(found->prefix.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  for (std::size_t start = 0;;) {
    const std::size_t comma = rest.find(',', start);
    endpoint ep;
    if (!parse_endpoint(rest.substr(start, comma == std::string_view::npos ? rest.npos
                                                                           : comma - start),
                        t.url, ep, error)) {
      return std::nullopt;
    }
    t.endpoints.push_back(std::move(ep));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (t.kind == target_kind::redis && t.endpoints.size() > 1) {
    error = "a redis target names one server: '" + t.url + "'";
    return std::nullopt;
  }
  t.host = t.endpoints.front().host;
  t.port = t.endpoints.front().port;
  return t;
}

target client_target(const target& t, std::uint32_t client) {
  target out = t;
  if (!t.endpoints.empty()) {
    const endpoint& ep = t.endpoints[server_of(t, client)];
    out.host = ep.host;
    out.port = ep.port;
  }
  return out;
}

std::string endpoint_list(const target& t) {
  std::string out;
  for (const endpoint& ep : t.endpoints) {
    if (!out.empty()) out += ',';
    const bool v6 = ep.host.find(':') != std::string::npos;
    if (v6) out += '[';
    out += ep.host;
    if (v6) out += ']';
    out += ':';
    out += std::to_string(ep.port);
  }
  return out;
}

double jain_index(std::span<const std::uint64_t> counts) noexcept {
  double sum = 0, squares = 0;
  for (std::uint64_t c : counts) {
    const double x = static_cast<double>(c);
    sum += x;
    squares += x * x;
  }
  if (counts.empty() || squares == 0) return 1.0;
  return sum * sum / (static_cast<double>(counts.size()) * squares);
}

namespace {

bool parse_endpoint(std::string_view rest, const std::string& url, endpoint& out,
                    std::string& error) {
  const std::size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == rest.size()) {
    error = "target needs HOST:PORT: '" + url + "'";
    return false;
  }
  std::string_view host = rest.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      error = "malformed IPv6 host in '" + url + "'";
      return false;
    }
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    error = "an IPv6 host must be in brackets: '" + url + "'";
    return false;
  }
  std::string_view port_text = rest.substr(colon + 1);
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || ptr != port_text.data() + port_text.size() || port == 0 ||
      port > 65535) {
    error = "bad port in '" + url + "' (1..65535, nothing after it)";
    return false;
  }
  out.host = std::string(host);
  out.port = static_cast<std::uint16_t>(port);
  return true;
}

}  // namespace

void append_ping(std::string& out, std::uint64_t id) {
  out += R"({"op":"ping","id":)";
  append_uint(out, id);
  out += "}\n";
}

void append_acquire(std::string& out, std::uint64_t id, std::string_view key, std::uint32_t ttl_ms,
                    std::optional<std::uint32_t> wait_ms, std::uint32_t limit,
                    keylock::lock_mode mode) {
  out += R"({"op":"acquire","id":)";
  append_uint(out, id);
  out += R"(,"key":)";
  append_key(out, key);
  append_acquire_tail(out, ttl_ms, wait_ms, limit, mode);
}

void append_acquire_set(std::string& out, std::uint64_t id, std::span<const std::string> keys,
                        std::uint32_t ttl_ms, std::optional<std::uint32_t> wait_ms,
                        std::uint32_t limit, keylock::lock_mode mode) {
  out += R"({"op":"acquire","id":)";
  append_uint(out, id);
  out += R"(,"keys":[)";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) out += ',';
    append_key(out, keys[i]);
  }
  out += ']';
  append_acquire_tail(out, ttl_ms, wait_ms, limit, mode);
}

void append_release(std::string& out, std::uint64_t id, std::string_view key, std::uint64_t token,
                    bool noreply) {
  out += R"({"op":"release","id":)";
  append_uint(out, id);
  out += R"(,"key":)";
  append_key(out, key);
  out += R"(,"token":)";
  append_uint(out, token);
  out += noreply ? R"(,"noreply":true})"
                   "\n"
                 : "}\n";
}

bool scan_reply(std::string_view frame, reply_view& out) noexcept {
  out = reply_view{};
  if (frame.starts_with(R"({"event":)")) {
    out.is_event = true;
    return true;
  }
  if (auto p = frame.find(R"("id":)"); p != std::string_view::npos) {
    out.has_id = parse_uint_at(frame, p + 5, out.id);
  }
  const std::size_t ok = frame.find(R"("ok":)");
  if (ok == std::string_view::npos || ok + 5 >= frame.size()) return false;
  out.ok = frame[ok + 5] == 't';
  if (out.ok) {
    if (auto p = frame.find(R"("token":)", ok); p != std::string_view::npos) {
      out.has_token = parse_uint_at(frame, p + 8, out.token);
    }
  } else if (auto p = frame.find(R"("error":")", ok); p != std::string_view::npos) {
    const std::size_t begin = p + 9;
    const std::size_t end = frame.find('"', begin);
    if (end != std::string_view::npos) out.error = frame.substr(begin, end - begin);
  }
  return true;
}

void append_resp_command(std::string& out, std::initializer_list<std::string_view> args) {
  append_resp_command(out, std::span<const std::string_view>(args.begin(), args.size()));
}

void append_resp_command(std::string& out, std::span<const std::string_view> args) {
  out += '*';
  append_uint(out, args.size());
  out += "\r\n";
  for (std::string_view a : args) {
    out += '$';
    append_uint(out, a.size());
    out += "\r\n";
    out += a;
    out += "\r\n";
  }
}

// The same compare-and-delete as redis-py's Lock.release (LUA_RELEASE_SCRIPT): delete the key
// only while it still holds the caller's token.
const std::string_view redis_release_script =
    "local v = redis.call('get', KEYS[1]) "
    "if not v or v ~= ARGV[1] then return 0 end "
    "redis.call('del', KEYS[1]) "
    "return 1";

const std::string_view redis_semaphore_script =
    "for i = 1, tonumber(ARGV[3]) do "
    "if redis.call('set', KEYS[1] .. '#' .. i, ARGV[1], 'nx', 'px', ARGV[2]) then return i end "
    "end "
    "return 0";

std::string semaphore_slot_key(std::string_view key, std::uint32_t slot) {
  std::string k(key);
  k += '#';
  append_uint(k, slot);
  return k;
}

void format_token(std::uint64_t a, std::uint64_t b, token_text& out) noexcept {
  for (std::size_t i = 0; i < 16; ++i) {
    out[i] = hex_digits[(a >> (60 - 4 * i)) & 0xf];
    out[16 + i] = hex_digits[(b >> (60 - 4 * i)) & 0xf];
  }
}

}  // namespace keylock::bench
