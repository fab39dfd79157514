// A dispatcher over a real lock table with fake connections, for the dispatcher's tests
// (test_dispatch.cpp, test_acl.cpp).
#pragma once

#include "dispatch.hpp"

#include <map>
#include <string>
#include <string_view>

namespace keylock::testing {

struct counter_tokens final : token_source {
  std::uint64_t n = 0;
  bool available = true;  // false: as when the fencing state cannot be made durable
  bool ready() const override { return available; }
  std::uint64_t next() override { return ++n; }
};

// Two connections' output buffers, routed by owner.
struct fake_delivery final : delivery {
  std::map<owner_id, std::string> outputs;
  std::map<owner_id, connection_info> infos;
  std::string* output_for(owner_id owner) override {
    auto it = outputs.find(owner);
    return it == outputs.end() ? nullptr : &it->second;
  }
  const connection_info* info_for(owner_id owner) const override {
    auto it = infos.find(owner);
    return it == infos.end() ? nullptr : &it->second;
  }
  std::uint64_t connections() const override { return outputs.size(); }
};

struct fixture {
  config settings;
  counter_tokens tokens;
  lock_table table{table_limits{}, tokens};
  fake_delivery out;
  dispatcher dispatch;
  tick now{1'000'000};

  explicit fixture(config c = {}) : settings(std::move(c)), dispatch(settings, table, out, now) {}

  connection_info& connect(const std::string& name) {
    owner_id o = table.connect();
    out.outputs[o];
    connection_info& info = out.infos[o];
    info.owner = o;
    info.client = name;
    info.peer = "127.0.0.1:" + std::to_string(1000 + o);
    return info;
  }

  // Decodes and handles one frame from `conn`; returns what was appended to its output.
  std::string send(connection_info& conn, std::string_view frame) {
    std::string& buf = out.outputs[conn.owner];
    buf.clear();
    request req;
    if (auto err = decode_request(frame, req)) {
      dispatch.handle_decode_error(conn, *err, buf);
    } else {
      dispatch.handle(conn, req, now, buf);
    }
    return buf;
  }
};

}  // namespace keylock::testing
