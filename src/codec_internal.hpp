// The two request decoders behind keylock::decode_request, and the two reply decoders behind
// keylock::decode_reply, exposed for tests.
//
// decode_request tries decode_request_fast, which handles the common shape of a request (a
// flat object of known members, printable-ASCII strings, integers of up to 19 digits) without
// the general JSON parser, and declines anything else. decode_request_full is the complete
// decoder (nlohmann's SAX parser). Whatever the fast path accepts, the full decoder accepts
// with the same result: a differential test holds them to that.
#pragma once

#include <optional>
#include <string_view>

#include "keylock/codec.hpp"

namespace keylock {

// True when `frame` was decoded into `out`; false means "not handled", never "invalid".
bool decode_request_fast(std::string_view frame, request& out) noexcept;

std::optional<decode_error> decode_request_full(std::string_view frame, request& out);

// The same pair for replies (decode_reply): the fast path takes the flat replies a client
// reads most, the full one everything.
bool decode_reply_fast(std::string_view frame, reply& out);

std::optional<decode_error> decode_reply_full(std::string_view frame, reply& out);

}  // namespace keylock
