// libFuzzer target: the request decoder.
//
// For arbitrary bytes it checks that
//  - decode_request never crashes, hangs or trips a sanitizer;
//  - whenever decode_request_fast accepts a frame, decode_request_full accepts it too, with
//    identical fields (the fast path is an optimisation, never a different dialect);
//  - whatever was decoded survives append_request -> decode_request unchanged (round trip).
// A failed check calls abort(), which libFuzzer reports as a crash with the input saved.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "codec_internal.hpp"
#include "keylock/codec.hpp"

namespace {

bool same_request(const keylock::request& a, const keylock::request& b) {
  if (a.kind != b.kind || a.fields != b.fields) return false;
  if (a.kind == keylock::op::unknown && a.op_name != b.op_name) return false;
  using keylock::field;
  if (a.has(field::id) && a.id != b.id) return false;
  if (a.has(field::key) && a.key != b.key) return false;
  if (a.has(field::token) && a.token != b.token) return false;
  if (a.has(field::ttl_ms) && a.ttl_ms != b.ttl_ms) return false;
  if (a.has(field::wait_ms) && a.wait_ms != b.wait_ms) return false;
  if (a.has(field::limit) && a.limit != b.limit) return false;
  if (a.has(field::target) && a.target != b.target) return false;
  if (a.has(field::auth) && a.auth != b.auth) return false;
  if (a.has(field::client) && a.client != b.client) return false;
  if (a.has(field::n) && a.n != b.n) return false;
  if (a.has(field::noreply) && a.noreply != b.noreply) return false;
  if (a.has(field::keys) && a.keys != b.keys) return false;
  if (a.has(field::mode) && a.mode != b.mode) return false;
  return true;
}

[[noreturn]] void fail(const char* what, std::string_view frame) {
  std::fprintf(stderr, "fuzz_decode_request: %s\nframe (%zu bytes): %.*s\n", what, frame.size(),
               static_cast<int>(frame.size() > 512 ? 512 : frame.size()), frame.data());
  std::abort();
}

}  // namespace

// The libFuzzer entry point (also called by corpus_main.cpp for replay).
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);  // exact-size heap copy
  const std::string_view frame(bytes);

  keylock::request decoded;
  const auto err = keylock::decode_request(frame, decoded);
  if (err && err->message.size() > 512) fail("error message quotes too much input", frame);

  keylock::request fast;
  if (keylock::decode_request_fast(frame, fast)) {
    keylock::request full;
    if (keylock::decode_request_full(frame, full)) {
      fail("fast path accepted a frame the full decoder rejects", frame);
    }
    if (!same_request(fast, full)) fail("fast and full decoders disagree", frame);
    if (err) fail("fast path accepted but decode_request failed", frame);
    if (!same_request(fast, decoded)) fail("decode_request differs from the fast path", frame);
  }

  if (!err) {
    std::string encoded;
    keylock::append_request(encoded, decoded);
    if (encoded.empty() || encoded.back() != '\n') fail("append_request wrote no newline", frame);
    encoded.pop_back();
    keylock::request again;
    if (auto err2 = keylock::decode_request(encoded, again)) {
      fail(("re-encoded request does not decode: " + err2->message + " | " + encoded).c_str(),
           frame);
    }
    if (!same_request(decoded, again)) {
      fail(("round trip changed the request: " + encoded).c_str(), frame);
    }
  }
  return 0;
}
