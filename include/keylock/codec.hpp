// keylock wire codec: NDJSON frames <-> protocol.hpp types.
//
// Pure functions: no sockets, no buffers of their own, no global state. A frame is one JSON
// object; the newline that ends it on the wire is not part of the view passed to a decoder
// and is appended by every encoder. Decoders never throw; they report bad input as values.
#pragma once

#include "keylock/protocol.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keylock {

// Why a frame could not be decoded. `id` is set when the frame carried a valid id before the
// fault was found, so that the error reply can still be matched by the client.
struct decode_error {
  errc code = errc::bad_request;
  std::string message;  // for people; quotes at most 64 bytes of the input
  std::optional<std::uint64_t> id;
};

// Decodes one request frame (without its trailing '\n'; a trailing '\r' is tolerated).
//
// On success fills `out` (reusing its string capacity) and returns nullopt. Fails with
// bad_request for: invalid JSON, invalid UTF-8, a top-level value that is not an object, a
// missing or non-string `op`, a known field of the wrong JSON type (strings must be strings;
// id, token, ttl_ms, wait_ms, limit, target, n must be integers in 0..2^64-1), and a known
// field given twice. Unknown members, whatever their value, are ignored. An `op` string this
// build does not know decodes successfully as op::unknown (the dispatcher answers unknown_op).
std::optional<decode_error> decode_request(std::string_view frame, request& out);

// Appends `req` as one frame, '\n' included, to `out`. Writes only the fields set in
// req.fields, plus `op`.
void append_request(std::string& out, const request& req);

// Decodes one server frame (a reply or an event; without its '\n').
// Fails with bad_request on invalid JSON, a non-object, or a frame that is neither a reply
// (has `ok`) nor an event (has `event`). Unknown members are ignored.
std::optional<decode_error> decode_reply(std::string_view frame, reply& out);

// Appends `rep` as one frame, '\n' included, to `out`. Strings are escaped as JSON requires;
// non-ASCII UTF-8 is written as is. Never allocates beyond growing `out`.
void append_reply(std::string& out, const reply& rep);

// The daemon's hot replies, `{"id":N,"ok":true[,"token":T][,"ttl_ms":X]}` and '\n' (each
// member only when given), written with one append: byte for byte what append_reply writes
// for a success reply with only those members.
void append_ok_reply(std::string& out, std::optional<std::uint64_t> id,
                     std::optional<std::uint64_t> token = std::nullopt,
                     std::optional<std::uint64_t> ttl_ms = std::nullopt);

// What append_json_string does with well-formed non-ASCII UTF-8.
enum class json_escape {
  wire,  // writes it as is (the codec's encoders; PROTOCOL.md)
  log,   // escapes C1 controls, U+0080..U+009F, as \u0080..\u009f: terminals obey them
};

// Appends the JSON string literal for `s` (quotes included) to `out`: '"' and '\\' escaped, C0
// controls and DEL as \n \r \t \b \f or \u00XX, well-formed UTF-8 as `mode` says, and each byte
// that is not part of well-formed UTF-8 (RFC 3629) as \ufffd. So the output is valid JSON in
// valid UTF-8 whatever `s` holds; for valid UTF-8 it decodes back to `s`. Never fails; never
// allocates beyond growing `out`.
void append_json_string(std::string& out, std::string_view s, json_escape mode = json_escape::wire);

// True when `s` is well-formed UTF-8 without control characters (C0, DEL, C1): text that
// append_json_string(..., json_escape::log) changes only by escaping '"' and '\\'.
bool is_printable_utf8(std::string_view s) noexcept;

}  // namespace keylock
