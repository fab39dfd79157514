// Log formats for spdlog: `text` (the default pattern) or `json`, one JSON object per line:
//   {"ts":"2026-11-27T04:10:21.123Z","level":"warn","logger":"keylockd","msg":"..."}
// with the message escaped as JSON strings require (it may quote client input).
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
