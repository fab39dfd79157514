// keylock wire codec (codec.hpp).
//
// decode_request is on the daemon's hot path, so it runs nlohmann's SAX parser with a handler
// that writes straight into the caller's `request`: no DOM, and the request's strings keep
// their capacity from frame to frame. The encoders write JSON by hand into the caller's string.
// decode_reply is the client side and uses the DOM for simplicity.
//
// No exception leaves this file: nlohmann reports parse faults to the SAX handler, and the only
// other throw (std::bad_alloc, or a library bug) is caught at each decoder's edge.
#include "keylock/codec.hpp"

#include "codec_internal.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <limits>
#include <utility>

namespace keylock {
namespace {

using json = nlohmann::json;

// Messages quote at most this many bytes of client input (PROTOCOL.md).
constexpr std::size_t max_quote_bytes = 64;
// request::op_name keeps at most this many bytes of an unknown op (protocol.hpp).
constexpr std::size_t max_op_name_bytes = 64;

// ---------------------------------------------------------------------------------------------
// Numbers

void append_uint(std::string& out, std::uint64_t value) {
  std::array<char, 20> digits{};
  const auto end = std::to_chars(digits.data(), digits.data() + digits.size(), value).ptr;
  out.append(digits.data(), end);
}

void append_int(std::string& out, int value) {
  std::array<char, 12> digits{};
  const auto end = std::to_chars(digits.data(), digits.data() + digits.size(), value).ptr;
  out.append(digits.data(), end);
}

// ---------------------------------------------------------------------------------------------
// UTF-8 helpers for messages

// The length of the well-formed UTF-8 sequence that starts `s` (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF), or 0 when `s` does not start with one. `s` is not empty.
std::size_t utf8_sequence_length(std::string_view s) noexcept {
  const auto byte = [s](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto continues = [s, byte](std::size_t i, unsigned lo, unsigned hi) {
    return i < s.size() && byte(i) >= lo && byte(i) <= hi;
  };
  const unsigned lead = byte(0);
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return continues(1, 0x80, 0xBF) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    const unsigned lo = lead == 0xE0 ? 0xA0 : 0x80;  // E0 80..9F would be overlong
    const unsigned hi = lead == 0xED ? 0x9F : 0xBF;  // ED A0..BF would be a surrogate
    return continues(1, lo, hi) && continues(2, 0x80, 0xBF) ? 3 : 0;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    const unsigned lo = lead == 0xF0 ? 0x90 : 0x80;  // F0 80..8F would be overlong
    const unsigned hi = lead == 0xF4 ? 0x8F : 0xBF;  // F4 90.. would be above U+10FFFF
    return continues(1, lo, hi) && continues(2, 0x80, 0xBF) && continues(3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

// Appends a rendering of `input` that is at most `limit` bytes long and valid UTF-8 whatever
// `input` is: well-formed sequences as they are, other bytes as the text \xNN, and "..." after
// a cut. Messages go back to the client inside a JSON string, which must be valid UTF-8, and
// the input being quoted is often exactly the malformed part. Never quotes more than `limit`
// bytes of `input`, since each input byte yields at least one output byte.
void append_quote(std::string& msg, std::string_view input, std::size_t limit = max_quote_bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  std::size_t written = 0;
  std::size_t i = 0;
  while (i < input.size()) {
    const std::size_t length = utf8_sequence_length(input.substr(i));
    const std::size_t cost = length == 0 ? 4 : length;
    if (written + cost > limit) {
      msg += "...";
      return;
    }
    if (length == 0) {
      const auto b = static_cast<unsigned char>(input[i]);
      msg += "\\x";
      msg += hex[b >> 4];
      msg += hex[b & 0xF];
      i += 1;
    } else {
      msg.append(input.substr(i, length));
      i += length;
    }
    written += cost;
  }
}

// The longest prefix of `s` (valid UTF-8) that has at most `limit` bytes and does not split a
// sequence.
std::string_view utf8_prefix(std::string_view s, std::size_t limit) noexcept {
  if (s.size() <= limit) return s;
  std::size_t n = limit;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

// "invalid JSON at column N: REASON; last read: 'TOKEN'" from a fault nlohmann reported.
// nlohmann's what() is "[json.exception.parse_error.101] parse error at line 1, column N:
// syntax error while parsing CONTEXT - REASON[; last read: 'TOKEN'][; expected WHAT]". Only
// TOKEN is client input; it is re-quoted from `last_token` under the quoting rules. Everything
// is still passed through append_quote so that a different what() layout cannot leak input.
// With `secret` (the fault is in the value of `auth`) TOKEN is not quoted at all: messages are
// logged, and a secret must never be.
std::string json_fault_message(std::size_t position, std::string_view last_token,
                               std::string_view what, bool secret = false) {
  static constexpr std::string_view reason_start = " - ";
  static constexpr std::string_view token_start = "; last read: '";
  std::string msg = "invalid JSON at column ";
  append_uint(msg, position);
  msg += ": ";

  std::string_view reason = what;
  if (const auto at = reason.find(reason_start); at != std::string_view::npos) {
    reason.remove_prefix(at + reason_start.size());
  }
  const auto token_at = reason.find(token_start);
  append_quote(msg, reason.substr(0, token_at), 96);
  if (token_at != std::string_view::npos && secret) {
    msg += "; in the value of 'auth' (not quoted)";
  } else if (token_at != std::string_view::npos) {
    msg += token_start;
    append_quote(msg, last_token);
    msg += '\'';
  }
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Request members

// `strings` is `keys` (an array of strings); `mode` is a lock_mode spelled as a string.
enum class value_type : std::uint8_t { op, string, integer, boolean, strings, mode };

struct member_spec {
  std::string_view name;
  field bit;  // unused for `op`, which is not a field
  value_type type;
  std::string request::*text;     // value_type::string
  std::uint64_t request::*num;    // value_type::integer
  bool request::*flag = nullptr;  // value_type::boolean
};

constexpr std::string_view bad_mode_message = "field 'mode' must be \"exclusive\" or \"shared\"";
constexpr std::string_view bad_keys_message = "field 'keys' must be an array of strings";
constexpr std::string_view too_many_keys_message = "field 'keys' holds more than 64 keys";

// In field-bit order, which is also the order append_request writes them in.
constexpr std::array<member_spec, 14> request_fields = {{
    {"id", field::id, value_type::integer, nullptr, &request::id},
    {"key", field::key, value_type::string, &request::key, nullptr},
    {"token", field::token, value_type::integer, nullptr, &request::token},
    {"ttl_ms", field::ttl_ms, value_type::integer, nullptr, &request::ttl_ms},
    {"wait_ms", field::wait_ms, value_type::integer, nullptr, &request::wait_ms},
    {"limit", field::limit, value_type::integer, nullptr, &request::limit},
    {"target", field::target, value_type::integer, nullptr, &request::target},
    {"auth", field::auth, value_type::string, &request::auth, nullptr},
    {"client", field::client, value_type::string, &request::client, nullptr},
    {"n", field::n, value_type::integer, nullptr, &request::n},
    {"noreply", field::noreply, value_type::boolean, nullptr, nullptr, &request::noreply},
    {"keys", field::keys, value_type::strings, nullptr, nullptr},
    {"mode", field::mode, value_type::mode, nullptr, nullptr},
    {"user", field::user, value_type::string, &request::user, nullptr},
}};

constexpr member_spec op_member = {"op", field{}, value_type::op, nullptr, nullptr};

// The spec of the request member called `name`, or nullptr for a member this build ignores.
const member_spec* find_request_member(std::string_view name) noexcept {
  if (name == op_member.name) return &op_member;
  for (const member_spec& spec : request_fields) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

void reset_request(request& out) noexcept {
  out.kind = op::unknown;
  out.fields = 0;
  out.id = 0;
  out.token = 0;
  out.ttl_ms = 0;
  out.wait_ms = 0;
  out.limit = 0;
  out.target = 0;
  out.n = 0;
  // clear(), not assignment: the daemon reuses one request per connection, and keeping the
  // capacity keeps the hot path free of allocations for keys of a usual length.
  out.key.clear();
  out.keys.clear();
  out.mode = lock_mode::exclusive;
  out.auth.clear();
  out.client.clear();
  out.user.clear();
  out.op_name.clear();
  out.noreply = false;
}

// nlohmann SAX handler that decodes a request frame into `out`.
//
// depth_ counts the containers open around the next event: 0 before the top-level value, 1
// inside the top-level object (where member values are decoded), more inside a member's value
// (which is skipped, since only unknown members may hold containers). A `false` return stops
// the parse; the reason is then in error_.
class request_handler {
 public:
  explicit request_handler(request& out) noexcept : out_(out) {}

  request_handler(const request_handler&) = delete;
  request_handler& operator=(const request_handler&) = delete;

  bool null() { return scalar(); }
  bool boolean(bool value) {
    if (!decoding_member() || current_->type != value_type::boolean) return scalar();
    out_.*(current_->flag) = value;
    out_.set(current_->bit);
    return true;
  }
  bool number_integer(json::number_integer_t /*value*/) { return scalar(); }  // negatives only
  bool number_float(json::number_float_t /*value*/, const json::string_t& /*text*/) {
    return scalar();  // fractions, exponents, and integers beyond 64 bits
  }
  bool binary(json::binary_t& /*value*/) { return scalar(); }  // not produced for JSON text

  bool number_unsigned(json::number_unsigned_t value) {
    if (!decoding_member() || current_->type != value_type::integer) return scalar();
    out_.*(current_->num) = value;
    out_.set(current_->bit);
    return true;
  }

  bool string(json::string_t& value) {
    if (in_keys_) {
      if (depth_ != 2) return fail(bad_keys_message);
      if (out_.keys.size() >= max_keys_per_request) return fail(too_many_keys_message);
      out_.keys.emplace_back(std::move(value));
      return true;
    }
    if (!decoding_member()) return scalar();
    switch (current_->type) {
      case value_type::op:
        out_.kind = op_from_string(value);
        if (out_.kind == op::unknown) out_.op_name.assign(utf8_prefix(value, max_op_name_bytes));
        return true;
      case value_type::string:
        (out_.*(current_->text)).assign(value);
        out_.set(current_->bit);
        return true;
      case value_type::mode:
        if (auto mode = lock_mode_from_string(value)) {
          out_.mode = *mode;
          out_.set(current_->bit);
          return true;
        }
        return fail(bad_mode_message);
      case value_type::integer:
      case value_type::boolean:
      case value_type::strings:
        break;
    }
    return scalar();
  }

  bool start_object(std::size_t /*elements*/) {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    return open_container();
  }

  bool start_array(std::size_t /*elements*/) {
    if (depth_ == 0) return fail("top-level value must be an object");
    if (in_keys_) return fail(bad_keys_message);  // no arrays inside `keys`
    if (decoding_member() && current_->type == value_type::strings) {
      in_keys_ = true;
      ++depth_;
      return true;
    }
    return open_container();
  }

  bool end_object() { return close_container(); }
  bool end_array() {
    if (in_keys_) {
      in_keys_ = false;
      out_.set(field::keys);
    }
    return close_container();
  }

  bool key(json::string_t& name) {
    if (depth_ != 1) return true;
    current_ = find_request_member(name);
    if (current_ == nullptr) return true;
    if (current_->type == value_type::op) {
      if (seen_op_) return fail_member("duplicate field '", "'");
      seen_op_ = true;
    } else {
      const auto bit = static_cast<std::uint16_t>(current_->bit);
      if ((seen_ & bit) != 0) return fail_member("duplicate field '", "'");
      seen_ = static_cast<std::uint16_t>(seen_ | bit);
    }
    return true;
  }

  bool parse_error(std::size_t position, const std::string& last_token, const json::exception& ex) {
    const bool in_secret = depth_ == 1 && current_ != nullptr && current_->bit == field::auth;
    error_ = json_fault_message(position, last_token, ex.what(), in_secret);
    return false;
  }

  bool seen_op() const noexcept { return seen_op_; }
  std::string& error() noexcept { return error_; }

 private:
  // True when the next value is the value of a known member of the top-level object.
  bool decoding_member() const noexcept { return depth_ == 1 && current_ != nullptr; }

  // Any value the caller has no use for: fine inside an unknown member, wrong elsewhere.
  bool scalar() {
    if (depth_ == 0) return fail("top-level value must be an object");
    if (in_keys_) return fail(bad_keys_message);
    if (decoding_member()) return fail_mistyped();
    return true;
  }

  bool open_container() {
    if (in_keys_) return fail(bad_keys_message);
    if (decoding_member()) return fail_mistyped();
    ++depth_;
    return true;
  }

  bool close_container() noexcept {
    --depth_;
    // After the top-level object closes nothing else may follow (strict parsing checks that),
    // and inside it the next member starts with key().
    current_ = nullptr;
    return true;
  }

  bool fail_mistyped() {
    switch (current_->type) {
      case value_type::op:
      case value_type::string:
        return fail_member("field '", "' must be a string");
      case value_type::boolean:
        return fail_member("field '", "' must be true or false");
      case value_type::strings:
        return fail(bad_keys_message);
      case value_type::mode:
        return fail(bad_mode_message);
      case value_type::integer:
        break;
    }
    return fail_member("field '", "' must be an integer in 0..18446744073709551615");
  }

  bool fail_member(std::string_view before, std::string_view after) {
    error_.assign(before);
    error_ += current_->name;
    error_ += after;
    return false;
  }

  bool fail(std::string_view message) {
    error_.assign(message);
    return false;
  }

  request& out_;
  const member_spec* current_ = nullptr;  // known member whose value comes next, if any
  std::size_t depth_ = 0;
  std::uint16_t seen_ = 0;  // field bits whose name has been seen, for duplicate detection
  bool seen_op_ = false;
  bool in_keys_ = false;  // inside the `keys` array (depth_ 2)
  std::string error_;
};

decode_error make_error(std::string message, std::optional<std::uint64_t> id = std::nullopt) {
  decode_error error;
  error.code = errc::bad_request;
  error.message = std::move(message);
  error.id = id;
  return error;
}

// nlohmann's lexer takes a raw NUL byte for the end of the input (for C strings), so it
// accepts "{...}\0anything" and drops the rest. JSON has no raw NUL outside strings (and the
// lexer rejects one inside), so a frame whose parse succeeded but that holds a NUL is invalid.
std::string nul_fault_message(std::size_t offset) {
  std::string msg = "invalid JSON at column ";
  append_uint(msg, offset + 1);
  msg += ": NUL byte";
  return msg;
}

// The frame without the tolerated '\r' before its newline.
std::string_view strip_cr(std::string_view frame) noexcept {
  if (!frame.empty() && frame.back() == '\r') frame.remove_suffix(1);
  return frame;
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers

// Appends ,"name": (names are ours: plain ASCII, nothing to escape).
void append_name(std::string& out, std::string_view name) {
  // One size change instead of three appends: this runs for every member of every frame.
  const std::size_t at = out.size();
  out.resize(at + name.size() + 4);
  char* p = out.data() + at;
  *p++ = ',';
  *p++ = '"';
  std::memcpy(p, name.data(), name.size());
  p += name.size();
  *p++ = '"';
  *p = ':';
}

void append_uint_member(std::string& out, std::string_view name, std::uint64_t value) {
  append_name(out, name);
  append_uint(out, value);
}

void append_string_member(std::string& out, std::string_view name, std::string_view value) {
  append_name(out, name);
  append_json_string(out, value);
}

// Appends ,"name":["a","b",...].
void append_string_array(std::string& out, std::string_view name,
                         const std::vector<std::string>& values) {
  append_name(out, name);
  out += '[';
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, values[i]);
  }
  out += ']';
}

void append_holders(std::string& out, const std::vector<holder_info>& holders) {
  append_name(out, "holders");
  out += '[';
  bool first = true;
  for (const holder_info& h : holders) {
    if (!first) out += ',';
    first = false;
    out += "{\"token\":";
    append_uint(out, h.token);
    append_uint_member(out, "ttl_ms_left", h.ttl_ms_left);
    append_string_member(out, "mode", to_string(h.mode));
    if (!h.keys.empty()) append_string_array(out, "keys", h.keys);
    if (!h.client.empty()) append_string_member(out, "client", h.client);
    if (!h.peer.empty()) append_string_member(out, "peer", h.peer);
    out += '}';
  }
  out += ']';
}

// The stats members in stats_info order, shared by encoder and decoder.
struct stats_member {
  std::string_view name;
  std::uint64_t stats_info::*value;
};

constexpr std::array<stats_member, 11> stats_members = {{
    {"connections", &stats_info::connections},
    {"keys", &stats_info::keys},
    {"held", &stats_info::held},
    {"waiting", &stats_info::waiting},
    {"acquires", &stats_info::acquires},
    {"grants", &stats_info::grants},
    {"releases", &stats_info::releases},
    {"timeouts", &stats_info::timeouts},
    {"expirations", &stats_info::expirations},
    {"uptime_ms", &stats_info::uptime_ms},
    {"grants_shared", &stats_info::grants_shared},
}};

// ---------------------------------------------------------------------------------------------
// decode_reply helpers (DOM)

// Reads the members of one reply object into a reply, recording the first mistyped member.
// Cluster mode's members of inspect and of each `top` queue, flat.
void append_cluster(std::string& out, const cluster_view& c) {
  append_string_member(out, "global_holder", c.holder);
  append_uint_member(out, "daemons_waiting", c.daemons_waiting);
}

void append_queues(std::string& out, const std::vector<queue_info>& queues) {
  append_name(out, "queues");
  out += '[';
  for (std::size_t i = 0; i < queues.size(); ++i) {
    if (i != 0) out += ',';
    out += "{\"key\":";
    append_json_string(out, queues[i].key);
    append_uint_member(out, "waiters", queues[i].waiters);
    append_uint_member(out, "held", queues[i].held);
    append_uint_member(out, "limit", queues[i].limit);
    if (queues[i].cluster) append_cluster(out, *queues[i].cluster);
    out += '}';
  }
  out += ']';
}

void append_oldest(std::string& out, const std::vector<lease_info>& leases) {
  append_name(out, "oldest");
  out += '[';
  for (std::size_t i = 0; i < leases.size(); ++i) {
    const lease_info& l = leases[i];
    if (i != 0) out += ',';
    out += "{\"key\":";
    append_json_string(out, l.key);
    append_uint_member(out, "token", l.token);
    append_uint_member(out, "held_ms", l.held_ms);
    append_uint_member(out, "ttl_ms_left", l.ttl_ms_left);
    if (!l.client.empty()) append_string_member(out, "client", l.client);
    if (!l.peer.empty()) append_string_member(out, "peer", l.peer);
    out += '}';
  }
  out += ']';
}

class reply_reader {
 public:
  explicit reply_reader(const json& object) noexcept : object_(object) {}

  // Each reader leaves `target` alone when the member is absent and returns false (with
  // error() naming the member) when it is present with the wrong type.
  bool read(std::string_view name, std::optional<std::uint64_t>& target) {
    const json* value = find(name);
    if (value == nullptr) return true;
    if (!value->is_number_unsigned()) {
      return mistyped(name, "an integer in 0..18446744073709551615");
    }
    target = value->get<std::uint64_t>();
    return true;
  }

  bool read(std::string_view name, std::string& target) {
    const json* value = find(name);
    if (value == nullptr) return true;
    if (!value->is_string()) return mistyped(name, "a string");
    target = value->get_ref<const std::string&>();
    return true;
  }

  bool read(std::string_view name, std::optional<int>& target) {
    const json* value = find(name);
    if (value == nullptr) return true;
    if (value->is_number_unsigned()) {
      const auto v = value->get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
        return mistyped(name, "an int");
      }
      target = static_cast<int>(v);
      return true;
    }
    if (value->is_number_integer()) {  // negative
      const auto v = value->get<std::int64_t>();
      if (v < std::numeric_limits<int>::min()) return mistyped(name, "an int");
      target = static_cast<int>(v);
      return true;
    }
    return mistyped(name, "an int");
  }

  const json* find(std::string_view name) const {
    const auto it = object_.find(name);
    return it == object_.end() ? nullptr : &*it;
  }

  bool mistyped(std::string_view name, std::string_view expected) {
    error_ = "member '";
    error_ += name;
    error_ += "' must be ";
    error_ += expected;
    return false;
  }

  std::string& error() noexcept { return error_; }

 private:
  const json& object_;
  std::string error_;
};

// Reads `value` (an array of strings) into `out`.
bool read_strings(reply_reader& reader, std::string_view name, const json& value,
                  std::vector<std::string>& out) {
  if (!value.is_array()) return reader.mistyped(name, "an array of strings");
  out.reserve(value.size());
  for (const json& item : value) {
    if (!item.is_string()) return reader.mistyped(name, "an array of strings");
    out.push_back(item.get<std::string>());
  }
  return true;
}

bool read_holders(reply_reader& reader, const json& value, std::vector<holder_info>& out) {
  if (!value.is_array()) return reader.mistyped("holders", "an array of objects");
  out.reserve(value.size());
  for (const json& item : value) {
    if (!item.is_object()) return reader.mistyped("holders", "an array of objects");
    reply_reader holder(item);
    std::optional<std::uint64_t> token;
    std::optional<std::uint64_t> ttl_ms_left;
    holder_info info;
    std::string mode;
    const json* keys = holder.find("keys");
    if (!holder.read("token", token) || !holder.read("ttl_ms_left", ttl_ms_left) ||
        !holder.read("mode", mode) || !holder.read("client", info.client) ||
        !holder.read("peer", info.peer) ||
        (keys != nullptr && !read_strings(holder, "keys", *keys, info.keys))) {
      reader.error() = "in 'holders': " + holder.error();
      return false;
    }
    // An older server sends no mode (exclusive); a newer one may send a mode this build does
    // not know: read it as exclusive rather than fail the whole reply.
    info.mode = lock_mode_from_string(mode).value_or(lock_mode::exclusive);
    info.token = token.value_or(0);
    info.ttl_ms_left = ttl_ms_left.value_or(0);
    out.push_back(std::move(info));
  }
  return true;
}

// Reads an array of objects, each through `read_one(reply_reader&, T&)`.
template <class T, class ReadOne>
bool read_list(reply_reader& reader, std::string_view name, std::optional<std::vector<T>>& out,
               ReadOne read_one) {
  const json* value = reader.find(name);
  if (value == nullptr) return true;
  if (!value->is_array()) return reader.mistyped(name, "an array of objects");
  out.emplace();
  out->reserve(value->size());
  for (const json& item : *value) {
    if (!item.is_object()) return reader.mistyped(name, "an array of objects");
    reply_reader element(item);
    T t;
    if (!read_one(element, t)) {
      reader.error() = "in '" + std::string(name) + "': " + element.error();
      return false;
    }
    out->push_back(std::move(t));
  }
  return true;
}

bool read_cluster(reply_reader& r, std::optional<cluster_view>& out) {
  if (r.find("global_holder") == nullptr && r.find("daemons_waiting") == nullptr) return true;
  std::string holder;
  std::optional<std::uint64_t> waiting;
  if (!r.read("global_holder", holder) || !r.read("daemons_waiting", waiting)) return false;
  out = cluster_view{std::move(holder), waiting.value_or(0)};
  return true;
}

bool read_queue(reply_reader& r, queue_info& q) {
  std::optional<std::uint64_t> waiters, held, limit;
  if (!r.read("key", q.key) || !r.read("waiters", waiters) || !r.read("held", held) ||
      !r.read("limit", limit) || !read_cluster(r, q.cluster)) {
    return false;
  }
  q.waiters = waiters.value_or(0);
  q.held = held.value_or(0);
  q.limit = limit.value_or(0);
  return true;
}

bool read_lease(reply_reader& r, lease_info& l) {
  std::optional<std::uint64_t> token, held_ms, ttl_ms_left;
  if (!r.read("key", l.key) || !r.read("token", token) || !r.read("held_ms", held_ms) ||
      !r.read("ttl_ms_left", ttl_ms_left) || !r.read("client", l.client) ||
      !r.read("peer", l.peer)) {
    return false;
  }
  l.token = token.value_or(0);
  l.held_ms = held_ms.value_or(0);
  l.ttl_ms_left = ttl_ms_left.value_or(0);
  return true;
}

// Fills `out` from a parsed reply object; on failure the reason is in reader.error().
bool read_reply(reply_reader& reader, reply& out) {
  if (!reader.read("id", out.id)) return false;

  if (const json* ok = reader.find("ok"); ok != nullptr) {
    if (!ok->is_boolean()) return reader.mistyped("ok", "a boolean");
    out.type = ok->get<bool>() ? reply::kind::ok : reply::kind::error;
  } else if (reader.find("event") != nullptr) {
    out.type = reply::kind::event;
  } else {
    return reader.mistyped("ok", "present in a reply (or 'event' in an event)");
  }

  if (!reader.read("error", out.code_name)) return false;
  if (!out.code_name.empty()) {
    out.code = errc_from_string(out.code_name).value_or(errc::bad_request);
  }
  if (!reader.read("message", out.message) || !reader.read("event", out.event) ||
      !reader.read("key", out.key) || !reader.read("token", out.token) ||
      !reader.read("ttl_ms", out.ttl_ms) || !reader.read("server", out.server) ||
      !reader.read("version", out.version) || !reader.read("protocol", out.protocol) ||
      !reader.read("waiters", out.waiters) || !reader.read("limit", out.limit) ||
      !read_cluster(reader, out.cluster)) {
    return false;
  }

  stats_info stats;
  bool has_stats = false;
  for (const stats_member& member : stats_members) {
    const json* value = reader.find(member.name);
    if (value == nullptr) continue;
    // `held` is a boolean in inspect replies and a count in stats replies; `keys` is the key
    // list in an `expired` event and a count in stats replies.
    if (member.name == "held" && value->is_boolean()) {
      out.held = value->get<bool>();
      continue;
    }
    if (member.name == "keys" && value->is_array()) {
      if (!read_strings(reader, "keys", *value, out.keys)) return false;
      continue;
    }
    std::optional<std::uint64_t> number;
    if (!reader.read(member.name, number)) return false;
    stats.*(member.value) = *number;
    has_stats = true;
  }
  if (has_stats) out.stats = stats;

  if (const json* holders = reader.find("holders"); holders != nullptr) {
    if (!read_holders(reader, *holders, out.holders)) return false;
  }
  return read_list(reader, "queues", out.queues, read_queue) &&
         read_list(reader, "oldest", out.oldest, read_lease);
}

// Reads a flat JSON object the way the fast decoders accept it: known members, printable-ASCII
// strings without escapes, integers of up to 19 digits, true/false. Every function returns
// false for what it does not handle, which means "leave it to the full parser", never
// "invalid".
class flat_scanner {
 public:
  explicit flat_scanner(std::string_view frame) noexcept
      : p_(frame.data()), end_(frame.data() + frame.size()) {}

  void skip_ws() noexcept {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\r' || *p_ == '\n')) ++p_;
  }

  bool eat(char c) noexcept {
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }

  bool at(char c) const noexcept { return p_ != end_ && *p_ == c; }

  // A string with nothing to unescape or validate: printable ASCII only.
  bool plain_string(std::string_view& s) noexcept {
    if (!eat('"')) return false;
    const char* begin = p_;
    while (p_ < end_ && *p_ != '"') {
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '\\' || c < 0x20 || c >= 0x80) return false;
      ++p_;
    }
    if (p_ == end_) return false;
    s = std::string_view(begin, static_cast<std::size_t>(p_ - begin));
    ++p_;
    return true;
  }

  bool boolean(bool& v) noexcept {
    if (literal("true")) {
      v = true;
    } else if (literal("false")) {
      v = false;
    } else {
      return false;
    }
    return p_ == end_ || *p_ == ',' || *p_ == '}' || *p_ == ' ' || *p_ == '\t' || *p_ == '\r';
  }

  bool uint(std::uint64_t& v) noexcept {
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
    v = 0;
    if (*p_ == '0') {
      ++p_;
    } else {
      // At most 19 digits, so that v cannot overflow; longer numbers take the full parser.
      for (int digits = 0; p_ < end_ && *p_ >= '0' && *p_ <= '9'; ++p_) {
        if (++digits > 19) return false;
        v = v * 10 + static_cast<std::uint64_t>(*p_ - '0');
      }
    }
    return !(p_ < end_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E'));
  }

  // The whole frame as one object: `member(name)` reads each member's value (the scanner is
  // just past the colon) and returns false to decline the frame.
  template <class Member>
  bool object(Member&& member) {
    skip_ws();
    if (!eat('{')) return false;
    for (;;) {
      skip_ws();
      std::string_view name;
      if (!plain_string(name)) return false;
      skip_ws();
      if (!eat(':')) return false;
      skip_ws();
      if (!member(name)) return false;
      skip_ws();
      if (eat('}')) break;
      if (!eat(',')) return false;
    }
    skip_ws();
    return p_ == end_;
  }

 private:
  bool literal(std::string_view word) noexcept {
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::string_view(p_, word.size()) != word) {
      return false;
    }
    p_ += word.size();
    return true;
  }

  const char* p_;
  const char* end_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

bool decode_request_fast(std::string_view frame, request& out) noexcept {
  reset_request(out);
  flat_scanner in(frame);
  bool seen_op = false;
  const bool read = in.object([&](std::string_view name) {
    const member_spec* spec = find_request_member(name);
    if (spec == nullptr || out.has(spec->bit)) return false;  // unknown or repeated
    if (spec->type == value_type::boolean) {
      if (!in.boolean(out.*(spec->flag))) return false;
    } else if (spec->type == value_type::strings) {
      // ["a","b",...] of plain strings; anything else (empty, escapes, nesting) takes the
      // full parser, which also words the errors.
      if (!in.eat('[')) return false;
      for (;;) {
        in.skip_ws();
        std::string_view k;
        if (out.keys.size() >= max_keys_per_request || !in.plain_string(k)) return false;
        out.keys.emplace_back(k);
        in.skip_ws();
        if (in.eat(']')) break;
        if (!in.eat(',')) return false;
      }
    } else if (spec->type == value_type::integer) {
      if (!in.uint(out.*(spec->num))) return false;
    } else {
      std::string_view value;
      if (!in.plain_string(value)) return false;
      if (spec->type == value_type::op) {
        if (seen_op) return false;
        seen_op = true;
        out.kind = op_from_string(value);
        if (out.kind == op::unknown) out.op_name.assign(value.substr(0, max_op_name_bytes));
        return true;
      }
      if (spec->type == value_type::mode) {
        const auto mode = lock_mode_from_string(value);
        if (!mode) return false;
        out.mode = *mode;
      } else {
        (out.*(spec->text)).assign(value);
      }
    }
    out.set(spec->bit);
    return true;
  });
  return read && seen_op;
}

bool decode_reply_fast(std::string_view frame, reply& out) {
  out = reply{};
  flat_scanner in(frame);
  bool ok_seen = false;
  bool ok = false;
  bool event_seen = false;
  std::uint32_t seen = 0;  // one bit per member below: a repeated member takes the full parser
  auto once = [&seen](std::uint32_t bit) {
    if ((seen & bit) != 0) return false;
    seen |= bit;
    return true;
  };
  auto number = [&in](std::optional<std::uint64_t>& target) {
    std::uint64_t v = 0;
    if (!in.uint(v)) return false;
    target = v;
    return true;
  };
  auto text = [&in](std::string& target) {
    std::string_view v;
    if (!in.plain_string(v)) return false;
    target.assign(v);
    return true;
  };
  const bool read = in.object([&](std::string_view name) {
    // The members of acquire, release, extend, ping and error replies and of expired events;
    // anything else (hello, inspect, stats, top, a set's `keys`) takes the full parser.
    if (name == "id") return once(1U << 0) && number(out.id);
    if (name == "ok") {
      ok_seen = true;
      return once(1U << 1) && in.boolean(ok);
    }
    if (name == "token") return once(1U << 2) && number(out.token);
    if (name == "ttl_ms") return once(1U << 3) && number(out.ttl_ms);
    if (name == "error") return once(1U << 4) && text(out.code_name);
    if (name == "message") return once(1U << 5) && text(out.message);
    if (name == "event") {
      event_seen = true;
      return once(1U << 6) && text(out.event);
    }
    if (name == "key") return once(1U << 7) && text(out.key);
    return false;
  });
  if (!read || (!ok_seen && !event_seen)) return false;
  out.type = ok_seen ? (ok ? reply::kind::ok : reply::kind::error) : reply::kind::event;
  if (!out.code_name.empty()) {
    out.code = errc_from_string(out.code_name).value_or(errc::bad_request);
  }
  return true;
}

std::optional<decode_error> decode_request(std::string_view frame, request& out) {
  // Nearly every frame a client library sends is a flat object of known members with plain
  // ASCII strings and small integers: decode those without the general parser.
  if (decode_request_fast(frame, out)) return std::nullopt;
  return decode_request_full(frame, out);
}

std::optional<decode_error> decode_request_full(std::string_view frame, request& out) {
  reset_request(out);
  frame = strip_cr(frame);
  if (frame.empty()) return make_error("empty frame");

  request_handler handler(out);
  try {
    const bool parsed = json::sax_parse(frame.data(), frame.data() + frame.size(), &handler,
                                        json::input_format_t::json, /*strict=*/true);
    if (!parsed) {
      std::optional<std::uint64_t> id;
      if (out.has(field::id)) id = out.id;
      return make_error(std::move(handler.error()), id);
    }
  } catch (...) {
    // Only std::bad_alloc should get here: the SAX interface reports parse faults by call.
    // Decoders never throw, whatever the cause.
    return make_error("request could not be decoded");
  }
  std::optional<std::uint64_t> id;
  if (out.has(field::id)) id = out.id;
  if (const auto nul = frame.find('\0'); nul != std::string_view::npos) {
    return make_error(nul_fault_message(nul), id);
  }
  if (!handler.seen_op()) return make_error("missing field 'op'", id);
  return std::nullopt;
}

void append_request(std::string& out, const request& req) {
  out += "{\"op\":";
  append_json_string(out,
                     req.kind == op::unknown ? std::string_view(req.op_name) : to_string(req.kind));
  for (const member_spec& spec : request_fields) {
    if (!req.has(spec.bit)) continue;
    if (spec.type == value_type::integer) {
      append_uint_member(out, spec.name, req.*(spec.num));
    } else if (spec.type == value_type::boolean) {
      append_name(out, spec.name);
      out += req.*(spec.flag) ? "true" : "false";
    } else if (spec.type == value_type::strings) {
      append_string_array(out, spec.name, req.keys);
    } else if (spec.type == value_type::mode) {
      append_string_member(out, spec.name, to_string(req.mode));
    } else {
      append_string_member(out, spec.name, req.*(spec.text));
    }
  }
  out += "}\n";
}

std::optional<decode_error> decode_reply(std::string_view frame, reply& out) {
  // The replies a client reads most (acquire, release, extend, ping, errors, expired events)
  // are flat objects of a few members: decode those without the general parser.
  if (decode_reply_fast(frame, out)) return std::nullopt;
  return decode_reply_full(frame, out);
}

std::optional<decode_error> decode_reply_full(std::string_view frame, reply& out) {
  out = reply{};
  frame = strip_cr(frame);
  try {
    const json object = json::parse(frame.data(), frame.data() + frame.size(), nullptr,
                                    /*allow_exceptions=*/false);
    if (object.is_discarded() || frame.find('\0') != std::string_view::npos) {
      return make_error("invalid JSON or UTF-8");
    }
    if (!object.is_object()) return make_error("top-level value must be an object");
    reply_reader reader(object);
    if (!read_reply(reader, out)) return make_error(std::move(reader.error()), out.id);
  } catch (...) {
    return make_error("reply could not be decoded");
  }
  return std::nullopt;
}

void append_reply(std::string& out, const reply& rep) {
  out += '{';
  if (rep.type == reply::kind::event) {
    out += "\"event\":";
    append_json_string(out, rep.event);
    append_string_member(out, "key", rep.key);
    if (!rep.keys.empty()) append_string_array(out, "keys", rep.keys);
    if (rep.token) append_uint_member(out, "token", *rep.token);
    out += "}\n";
    return;
  }

  if (rep.id) {
    out += "\"id\":";
    append_uint(out, *rep.id);
    out += ',';
  }
  if (rep.type == reply::kind::error) {
    out += "\"ok\":false";
    append_string_member(out, "error", to_string(rep.code));
    append_string_member(out, "message", rep.message);
    out += "}\n";
    return;
  }

  out += "\"ok\":true";
  if (rep.token) append_uint_member(out, "token", *rep.token);
  if (rep.ttl_ms) append_uint_member(out, "ttl_ms", *rep.ttl_ms);
  if (!rep.server.empty()) append_string_member(out, "server", rep.server);
  if (!rep.version.empty()) append_string_member(out, "version", rep.version);
  if (rep.protocol) {
    append_name(out, "protocol");
    append_int(out, *rep.protocol);
  }
  if (rep.held) {
    append_name(out, "held");
    out += *rep.held ? "true" : "false";
    append_holders(out, rep.holders);
  }
  if (rep.waiters) append_uint_member(out, "waiters", *rep.waiters);
  if (rep.limit) append_uint_member(out, "limit", *rep.limit);
  if (rep.cluster) append_cluster(out, *rep.cluster);
  if (rep.stats) {
    for (const stats_member& member : stats_members) {
      append_uint_member(out, member.name, (*rep.stats).*(member.value));
    }
  }
  if (rep.queues) append_queues(out, *rep.queues);
  if (rep.oldest) append_oldest(out, *rep.oldest);
  out += "}\n";
}

void append_ok_reply(std::string& out, std::optional<std::uint64_t> id,
                     std::optional<std::uint64_t> token, std::optional<std::uint64_t> ttl_ms) {
  // 13 + 3 * 20 digits + the members' names: under 128 bytes whatever the values.
  std::array<char, 128> buf;
  char* p = buf.data();
  char* const end = buf.data() + buf.size();
  auto put = [&p](std::string_view s) {
    std::memcpy(p, s.data(), s.size());
    p += s.size();
  };
  put("{");
  if (id) {
    put("\"id\":");
    p = std::to_chars(p, end, *id).ptr;
    put(",");
  }
  put("\"ok\":true");
  if (token) {
    put(",\"token\":");
    p = std::to_chars(p, end, *token).ptr;
  }
  if (ttl_ms) {
    put(",\"ttl_ms\":");
    p = std::to_chars(p, end, *ttl_ms).ptr;
  }
  put("}\n");
  out.append(buf.data(), p);
}

void append_json_string(std::string& out, std::string_view s, json_escape mode) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  // Copy runs of bytes that need no escape in one append each. Printable ASCII is tested
  // first: it is nearly all of what the daemon encodes.
  std::size_t run = 0;
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      const std::size_t length = utf8_sequence_length(s.substr(i));
      // U+0080..U+009F is C2 80..C2 9F.
      const bool c1 = length == 2 && c == 0xC2 && static_cast<unsigned char>(s[i + 1]) <= 0x9F;
      if (length != 0 && !(c1 && mode == json_escape::log)) {
        i += length;
        continue;
      }
      out.append(s.data() + run, i - run);
      if (length == 0) {
        out += "\\ufffd";  // a stray byte: one U+FFFD each
        i += 1;
      } else {
        out += "\\u00";
        const auto code = static_cast<unsigned char>(s[i + 1]);
        out += hex[code >> 4];
        out += hex[code & 0xF];
        i += 2;
      }
      run = i;
      continue;
    }
    out.append(s.data() + run, i - run);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        // Other controls, and DEL, which JSON allows raw but terminals do not show.
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 0xF];
        break;
    }
    run = ++i;
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

bool is_printable_utf8(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      ++i;
      continue;
    }
    if (c < 0x80) return false;  // C0 or DEL
    const std::size_t length = utf8_sequence_length(s.substr(i));
    if (length == 0) return false;
    if (length == 2 && c == 0xC2 && static_cast<unsigned char>(s[i + 1]) <= 0x9F) return false;
    i += length;
  }
  return true;
}

}  // namespace keylock
