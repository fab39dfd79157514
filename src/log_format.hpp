// Log formats for spdlog, which keep client input (a client name, an op, a quoted key) from
// forging log lines or sending escape sequences to the operator's terminal:
//   text  "2026-11-27T04:10:21.123 warn MESSAGE". A MESSAGE that holds a control character
//         (C0, DEL, C1) or invalid UTF-8 is written as the inside of a JSON string
//         ("evil\n..." on one line, ESC as \u001b, a stray byte as \ufffd); any other is
//         written as is.
//   json  one JSON object per line, in valid UTF-8 whatever the message holds:
//         {"ts":"2026-11-27T04:10:21.123Z","level":"warn","logger":"keylockd","msg":"..."}
// Both escape with keylock::append_json_string (json_escape::log).
#pragma once

#include <string_view>

namespace spdlog {
class logger;
}

namespace keylock {

// Installs the formatter named by `format` ("text" or "json") on `logger`. Returns false for
// an unknown name.
bool set_log_format(spdlog::logger& logger, std::string_view format);

}  // namespace keylock
