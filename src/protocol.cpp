// Wire spellings of the protocol enums (protocol.hpp). One switch per enum, so that adding an
// enumerator without its spelling is a -Wswitch warning, and one table walk back.
#include "keylock/protocol.hpp"

#include <array>

namespace keylock {

std::string_view to_string(errc code) noexcept {
  switch (code) {
    case errc::bad_request:
      return "bad_request";
    case errc::unknown_op:
      return "unknown_op";
    case errc::frame_too_large:
      return "frame_too_large";
    case errc::unauthenticated:
      return "unauthenticated";
    case errc::timeout:
      return "timeout";
    case errc::not_held:
      return "not_held";
    case errc::cancelled:
      return "cancelled";
    case errc::not_found:
      return "not_found";
    case errc::conflict:
      return "conflict";
    case errc::limit_exceeded:
      return "limit_exceeded";
    case errc::shutting_down:
      return "shutting_down";
    case errc::unavailable:
      return "unavailable";
    case errc::denied:
      return "denied";
  }
  // Only reachable through a cast of an out-of-range value. A name that is no code makes a
  // client treat the reply as a generic failure, which is the honest reading.
  return "unknown_error";
}

std::optional<errc> errc_from_string(std::string_view name) noexcept {
  static constexpr std::array all = {
      errc::bad_request, errc::unknown_op,     errc::frame_too_large, errc::unauthenticated,
      errc::timeout,     errc::not_held,       errc::cancelled,       errc::not_found,
      errc::conflict,    errc::limit_exceeded, errc::shutting_down,   errc::unavailable,
      errc::denied,
  };
  for (errc code : all) {
    if (to_string(code) == name) return code;
  }
  return std::nullopt;
}

std::string_view to_string(lock_mode mode) noexcept {
  switch (mode) {
    case lock_mode::exclusive:
      return "exclusive";
    case lock_mode::shared:
      return "shared";
  }
  return "exclusive";
}

std::optional<lock_mode> lock_mode_from_string(std::string_view name) noexcept {
  if (name == "exclusive") return lock_mode::exclusive;
  if (name == "shared") return lock_mode::shared;
  return std::nullopt;
}

std::string_view to_string(op kind) noexcept {
  switch (kind) {
    case op::hello:
      return "hello";
    case op::ping:
      return "ping";
    case op::acquire:
      return "acquire";
    case op::release:
      return "release";
    case op::extend:
      return "extend";
    case op::cancel:
      return "cancel";
    case op::inspect:
      return "inspect";
    case op::stats:
      return "stats";
    case op::top:
      return "top";
    case op::unknown:
      return "unknown";
  }
  return "unknown";
}

op op_from_string(std::string_view name) noexcept {
  // On the daemon's hot path (every request): dispatch on the length first so that at most
  // two comparisons run. "unknown" is deliberately not matched: it is no operation.
  switch (name.size()) {
    case 3:
      if (name == "top") return op::top;
      break;
    case 4:
      if (name == "ping") return op::ping;
      break;
    case 5:
      if (name == "hello") return op::hello;
      if (name == "stats") return op::stats;
      break;
    case 6:
      if (name == "extend") return op::extend;
      if (name == "cancel") return op::cancel;
      break;
    case 7:
      if (name == "acquire") return op::acquire;
      if (name == "release") return op::release;
      if (name == "inspect") return op::inspect;
      break;
    default:
      break;
  }
  return op::unknown;
}

}  // namespace keylock
