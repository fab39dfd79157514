#include "dispatch.hpp"

#include <openssl/crypto.h>

#include <string>

#include "keylock_version.hpp"

namespace keylock {

namespace {

constexpr std::uint16_t key_field = static_cast<std::uint16_t>(field::key);
constexpr std::size_t max_client_name_bytes = 256;

constexpr std::uint64_t default_top_n = 10;
constexpr std::uint64_t max_top_n = 100;

// Field names for messages, in bit order of `field`.
constexpr std::string_view field_names[] = {"id",     "key",    "token",  "ttl_ms", "wait_ms",
                                            "limit",  "target", "auth",   "client", "n",
                                            "noreply", "keys",  "mode", "user"};

std::optional<std::uint64_t> id_of(const request& req) {
  return req.has(field::id) ? std::optional<std::uint64_t>(req.id) : std::nullopt;
}

// Resets a reusable reply, keeping its buffers' capacity.
reply& fresh(reply& r, const request* req) {
  r.type = reply::kind::ok;
  r.id.reset();
  if (req != nullptr && req->has(field::id)) r.id = req->id;
  r.message.clear();
  r.event.clear();
  r.key.clear();
  r.keys.clear();
  r.token.reset();
  r.ttl_ms.reset();
  r.server.clear();
  r.version.clear();
  r.protocol.reset();
  r.held.reset();
  r.holders.clear();
  r.waiters.reset();
  r.limit.reset();
  r.stats.reset();
  r.queues.reset();
  r.oldest.reset();
  r.cluster.reset();
  return r;
}

// The longest prefix of `s` (valid UTF-8) of at most `limit` bytes that splits no sequence.
std::string_view utf8_prefix(std::string_view s, std::size_t limit) noexcept {
  if (s.size() <= limit) return s;
  std::size_t n = limit;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

std::string range_message(std::string_view name, std::uint64_t lo, std::uint64_t hi) {
  std::string m(name);
  m += " must be ";
  m += std::to_string(lo);
  m += "..";
  m += std::to_string(hi);
  return m;
}

}  // namespace

std::span<const op_spec> op_table() {
  constexpr auto before_auth = static_cast<std::uint8_t>(op_flag::before_auth);
  constexpr auto admin = static_cast<std::uint8_t>(op_flag::admin);
  constexpr auto token = static_cast<std::uint16_t>(field::token);
  constexpr std::uint16_t key_or_keys = field::key | field::keys;
  static constexpr op_spec specs[] = {
      {"hello", op::hello, 0, field::auth | field::client | field::user, 0, before_auth,
       &dispatcher::do_hello},
      {"ping", op::ping, 0, 0, 0, 0, &dispatcher::do_ping},
      {"acquire", op::acquire, 0,
       key_or_keys | field::ttl_ms | field::wait_ms | field::limit | field::mode, key_or_keys, 0,
       &dispatcher::do_acquire},
      {"release", op::release, token, key_or_keys | field::noreply, key_or_keys, 0,
       &dispatcher::do_release},
      {"extend", op::extend, token, key_or_keys | field::ttl_ms, key_or_keys, 0,
       &dispatcher::do_extend},
      {"cancel", op::cancel, static_cast<std::uint16_t>(field::target), 0, 0, 0,
       &dispatcher::do_cancel},
      {"inspect", op::inspect, key_field, 0, 0, 0, &dispatcher::do_inspect},
      {"stats", op::stats, 0, 0, 0, admin, &dispatcher::do_stats},
      {"top", op::top, 0, static_cast<std::uint16_t>(field::n), 0, admin, &dispatcher::do_top},
  };
  return specs;
}

dispatcher::dispatcher(const config& settings, lock_table& table, delivery& out, tick started)
    : settings_(settings), table_(table), delivery_(out), started_(started) {
  if (!settings_.auth.empty()) auth_digest_ = sha256(settings_.auth);
  for (const op_spec& spec : op_table()) specs_[static_cast<std::size_t>(spec.kind)] = &spec;
}

void dispatcher::set_auth_secret(std::string_view secret) { auth_digest_ = sha256(secret); }

void dispatcher::reply_error(connection_info& conn, const request* req, errc code,
                             std::string_view message, std::string& out) {
  ++counters_.errors[static_cast<std::size_t>(code)];
  switch (code) {
    case errc::bad_request:
    case errc::unknown_op:
    case errc::frame_too_large:
    case errc::unauthenticated:
    case errc::limit_exceeded:
      if (on_client_error) on_client_error(conn, code, message);
      break;
    default:
      break;
  }
  reply& r = fresh(reply_, req);
  r.type = reply::kind::error;
  r.code = code;
  r.message.assign(message);
  append_reply(out, r);
}

void dispatcher::handle_decode_error(connection_info& conn, const decode_error& err,
                                     std::string& out) {
  if (auth_required() && !conn.authenticated) {
    // Before authentication nothing but a well-formed hello is heard.
    conn.close_after_reply = true;
    request none;
    if (err.id) {
      none.id = *err.id;
      none.set(field::id);
    }
    reply_error(conn, &none, errc::unauthenticated, "authenticate with hello first", out);
    return;
  }
  ++counters_.errors[static_cast<std::size_t>(err.code)];
  if (on_client_error) on_client_error(conn, err.code, err.message);
  reply& r = fresh(reply_, nullptr);
  r.id = err.id;
  r.type = reply::kind::error;
  r.code = err.code;
  r.message = err.message;
  append_reply(out, r);
}

void dispatcher::handle_oversized_frame(connection_info& conn, std::string& out) {
  conn.close_after_reply = true;
  reply_error(conn, nullptr, errc::frame_too_large,
              "frame exceeds max_frame_bytes (" + std::to_string(settings_.max_frame_bytes) +
                  "); closing",
              out);
}

bool dispatcher::authorize_or_reply(connection_info& conn, const request& req, tick now,
                                    std::string& out) {
  const bool hello = req.kind == op::hello;
  if (hello && req.has(field::user)) return log_in_or_reply(conn, req, now, out);
  if (!auth_required() || conn.authenticated) return true;
  if (hello && req.has(field::auth) && !settings_.auth.empty()) {
    // Compare digests: constant time, and independent of the secrets' lengths.
    auto given = sha256(req.auth);
    if (CRYPTO_memcmp(given.data(), auth_digest_.data(), given.size()) == 0) {
      conn.authenticated = true;
      conn.user.reset();
      return true;
    }
    conn.close_after_reply = true;
    reply_error(conn, &req, errc::unauthenticated, "wrong secret", out);
    return false;
  }
  conn.close_after_reply = true;
  reply_error(conn, &req, errc::unauthenticated,
              hello && req.has(field::auth) ? "this server has no shared secret: log in with 'user'"
                                            : "authenticate with hello first",
              out);
  return false;
}

// hello with `user`: a login, also on a connection that is already authenticated (it changes
// user). Any failure closes the connection.
bool dispatcher::log_in_or_reply(connection_info& conn, const request& req, tick now,
                                 std::string& out) {
  auto refuse = [&](std::string_view why) {
    conn.close_after_reply = true;
    reply_error(conn, &req, errc::unauthenticated, why, out);
    return false;
  };
  if (users_ == nullptr) return refuse("this server has no users_file: log in with 'auth' alone");
  if (!req.has(field::auth)) return refuse("a login with 'user' needs 'auth', the user's secret");
  // A secret verified before costs a SHA-256; only the rest count against the budget.
  auto account = users_->find(req.user);
  if (account == nullptr || !account->verified_before(req.auth)) {
    if (now - failed_logins_since_ >= std::chrono::seconds(1)) {
      failed_logins_since_ = now;
      failed_logins_ = 0;
    }
    if (failed_logins_ >= max_failed_logins_per_second) {
      return refuse("too many failed logins in the last second; retry later");
    }
    account = users_->authenticate(req.user, req.auth);
    if (account == nullptr) {
      ++failed_logins_;
      return refuse("unknown user or wrong secret");
    }
  }
  conn.user = std::move(account);
  conn.authenticated = true;
  return true;
}

bool dispatcher::deny(connection_info& conn, const request& req, std::string_view what,
                      std::string_view key, std::string& out) {
  std::string m = "user '" + conn.user->name + "' may not " + std::string(what);
  if (!key.empty()) {
    m += " '";
    m += utf8_prefix(key, 64);
    m += key.size() > 64 ? "...'" : "'";
  }
  reply_error(conn, &req, errc::denied, m, out);
  return false;
}

// The ACL check (PROTOCOL.md "Users and access control"), for a connection with a user, after
// validation and before the op runs.
bool dispatcher::permitted_or_reply(connection_info& conn, const request& req, tick now,
                                    std::string& out) {
  const user_account& u = *conn.user;
  constexpr std::uint8_t see = bit(permission::inspect) | bit(permission::admin);
  switch (req.kind) {
    case op::acquire:
      for (std::string_view k : keys_of(req)) {
        if (!u.may(permission::lock, k)) return deny(conn, req, "lock", k, out);
      }
      return true;
    case op::release:
    case op::extend: {
      const auto keys = keys_of(req);
      bool admin_everywhere = true;
      for (std::string_view k : keys) {
        const std::uint8_t bits = u.allowed(k);
        if ((bits & (bit(permission::lock) | bit(permission::admin))) == 0) {
          return deny(conn, req, "lock", k, out);
        }
        admin_everywhere = admin_everywhere && (bits & bit(permission::admin)) != 0;
      }
      if (admin_everywhere) return true;
      // Without admin on every key: only a lease of this same user (or none: not_held).
      const std::optional<owner_id> owner = table_.lease_owner(keys[0], req.token, now);
      if (!owner) return true;
      const connection_info* other = delivery_.info_for(*owner);
      if (other != nullptr && other->user != nullptr && other->user->name == u.name) {
        return true;
      }
      for (std::string_view k : keys) {
        if (!u.may(permission::admin, k)) {
          return deny(conn, req,
                      req.kind == op::release ? "release another user's lease on"
                                              : "extend another user's lease on",
                      k, out);
        }
      }
      return true;
    }
    case op::inspect:
      return (u.allowed(req.key) & see) != 0 || deny(conn, req, "inspect", req.key, out);
    case op::stats:
    case op::top:
      return u.may_somewhere(permission::admin) ||
             deny(conn, req, req.kind == op::top ? "see top (needs admin)" : "see stats (needs admin)",
                  {}, out);
    default:
      return true;
  }
}

// The cold half of validate_or_reply's range check, out of line so that the check itself
// inlines.
bool dispatcher::reject_range(connection_info& conn, const request& req, std::string_view name,
                              std::uint64_t lo, std::uint64_t hi, std::string& out) {
  reply_error(conn, &req, errc::bad_request, range_message(name, lo, hi), out);
  return false;
}

bool dispatcher::validate_or_reply(connection_info& conn, const request& req, std::string& out) {
  const op_spec& spec = *specs_[static_cast<std::size_t>(req.kind)];
  std::uint16_t missing = spec.required & static_cast<std::uint16_t>(~req.fields);
  if (missing != 0) {
    for (std::size_t bit = 0; bit < std::size(field_names); ++bit) {
      if ((missing & (1u << bit)) != 0) {
        reply_error(conn, &req, errc::bad_request,
                    std::string(spec.name) + " needs '" + std::string(field_names[bit]) + "'", out);
        return false;
      }
    }
  }
  auto check = [&](field f, std::string_view name, std::uint64_t value, std::uint64_t lo,
                   std::uint64_t hi) {
    if (!req.has(f) || (value >= lo && value <= hi)) [[likely]]
      return true;
    return reject_range(conn, req, name, lo, hi, out);
  };
  // Exactly one bit of one_of, tested without popcount: without -mpopcnt std::popcount (and
  // libstdc++'s has_single_bit, built on it) is a libgcc call, 1 % of the pipelined daemon's CPU.
  const unsigned given = req.fields & spec.one_of;
  if (spec.one_of != 0 && (given == 0 || (given & (given - 1)) != 0)) {
    std::string names;
    for (std::size_t bit = 0; bit < std::size(field_names); ++bit) {
      if ((spec.one_of & (1u << bit)) == 0) continue;
      if (!names.empty()) names += " or ";
      names += '\'';
      names += field_names[bit];
      names += '\'';
    }
    reply_error(conn, &req, errc::bad_request,
                std::string(spec.name) + " needs exactly one of " + names, out);
    return false;
  }
  // Only the fields this op takes are checked: a known member that the op does not use is
  // ignored, like an unknown one.
  const std::uint16_t takes = spec.required | spec.optional;
  if ((takes & key_field) != 0 &&
      !check(field::key, "key length in bytes", req.key.size(), 1, settings_.max_key_bytes)) {
    return false;
  }
  if ((takes & static_cast<std::uint16_t>(field::keys)) != 0 && req.has(field::keys) &&
      !validate_keys_or_reply(conn, req, out)) {
    return false;
  }
  switch (req.kind) {
    case op::acquire:
      if (req.mode == lock_mode::shared && req.has(field::limit) && req.limit > 1) {
        reply_error(conn, &req, errc::bad_request,
                    "mode shared needs limit 1: a key is a read-write lock or a semaphore", out);
        return false;
      }
      return check(field::ttl_ms, "ttl_ms", req.ttl_ms, 1, settings_.max_ttl_ms) &&
             check(field::wait_ms, "wait_ms", req.wait_ms, 0, settings_.max_wait_ms) &&
             check(field::limit, "limit", req.limit, 1, settings_.max_limit);
    case op::extend:
      return check(field::ttl_ms, "ttl_ms", req.ttl_ms, 1, settings_.max_ttl_ms);
    case op::top:
      return check(field::n, "n", req.n, 1, max_top_n);
    case op::hello:
      return check(field::client, "client name length in bytes", req.client.size(), 0,
                   max_client_name_bytes) &&
             check(field::user, "user name length in bytes", req.user.size(), 1,
                   max_client_name_bytes);
    default:
      return true;
  }
}

// `keys`: 1..64 distinct keys, each 1..max_key_bytes. n <= 64, so the pairwise check is cheap
// and needs no allocation.
bool dispatcher::validate_keys_or_reply(connection_info& conn, const request& req,
                                        std::string& out) {
  const std::size_t n = req.keys.size();
  if (n < 1 || n > max_keys_per_request) {
    reply_error(conn, &req, errc::bad_request,
                range_message("number of keys", 1, max_keys_per_request), out);
    return false;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& k = req.keys[i];
    if (k.empty() || k.size() > settings_.max_key_bytes) {
      reply_error(conn, &req, errc::bad_request,
                  range_message("key length in bytes", 1, settings_.max_key_bytes), out);
      return false;
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (req.keys[j] == k) {
        reply_error(conn, &req, errc::bad_request, "keys must be distinct", out);
        return false;
      }
    }
  }
  return true;
}

std::span<const std::string_view> dispatcher::keys_of(const request& req) {
  if (!req.has(field::keys)) {
    key_views_[0] = req.key;
    return {key_views_.data(), 1};
  }
  for (std::size_t i = 0; i < req.keys.size(); ++i) key_views_[i] = req.keys[i];
  return {key_views_.data(), req.keys.size()};
}

void dispatcher::handle(connection_info& conn, const request& req, tick now, std::string& out) {
  if (!authorize_or_reply(conn, req, now, out)) return;
  if (req.kind == op::unknown) {
    reply_error(conn, &req, errc::unknown_op, "unknown op '" + req.op_name + "'", out);
    return;
  }
  if (!validate_or_reply(conn, req, out)) return;
  if (conn.user != nullptr && !permitted_or_reply(conn, req, now, out)) return;
  (this->*specs_[static_cast<std::size_t>(req.kind)]->run)(conn, req, now, out);
}

void dispatcher::do_hello(connection_info& conn, const request& req, tick /*now*/,
                          std::string& out) {
  if (req.has(field::client)) conn.client = req.client;
  reply& r = fresh(reply_, &req);
  r.server = "keylockd";
  r.version = KEYLOCK_VERSION;
  r.protocol = protocol_version;
  append_reply(out, r);
}

void dispatcher::do_ping(connection_info& /*conn*/, const request& req, tick /*now*/,
                         std::string& out) {
  append_ok_reply(out, id_of(req));
}

void dispatcher::do_acquire(connection_info& conn, const request& req, tick now,
                            std::string& out) {
  acquire_args args;
  if (req.has(field::keys)) {
    args.keys = keys_of(req);
  } else {
    args.key = req.key;
  }
  args.mode = req.mode;
  args.ttl_ms = req.has(field::ttl_ms) ? static_cast<std::uint32_t>(req.ttl_ms)
                                       : settings_.default_ttl_ms;
  if (cluster.ttl_cap) args.ttl_ms = std::max(1u, std::min(args.ttl_ms, cluster.ttl_cap(now)));
  if (req.has(field::wait_ms)) args.wait_ms = static_cast<std::uint32_t>(req.wait_ms);
  args.limit = req.has(field::limit) ? static_cast<std::uint32_t>(req.limit) : 1;
  if (req.has(field::id)) args.request_id = req.id;
  events_.clear();
  acquire_result res = table_.acquire(conn.owner, args, now, events_);
  deliver_events(&conn, &out);
  switch (res.status) {
    case acquire_status::granted:
      return append_ok_reply(out, id_of(req), res.token, args.ttl_ms);
    case acquire_status::queued:
      return;  // answered later by a granted / wait_timeout / cancelled / aborted event
    case acquire_status::busy:
      return reply_error(conn, &req, errc::timeout, "lock is not free", out);
    case acquire_status::conflict:
      return reply_error(conn, &req, errc::conflict, "key is live with another limit", out);
    case acquire_status::too_many_keys:
      return reply_error(conn, &req, errc::limit_exceeded, "too many keys (max_keys)", out);
    case acquire_status::too_many_waiters:
      return reply_error(conn, &req, errc::limit_exceeded,
                         "too many waiters on this key (max_waiters_per_key)", out);
    case acquire_status::too_many_pending:
      return reply_error(conn, &req, errc::limit_exceeded,
                         "too many waiting acquires on this connection "
                         "(max_pending_per_connection)",
                         out);
    case acquire_status::too_many_owner_leases:
      return reply_error(conn, &req, errc::limit_exceeded,
                         "too many leases and waiting acquires on this connection "
                         "(max_leases_per_connection)",
                         out);
    case acquire_status::too_many_leases:
      return reply_error(conn, &req, errc::limit_exceeded, "too many leases held (max_leases)",
                         out);
    case acquire_status::unavailable:
      return reply_error(conn, &req, errc::unavailable,
                         cluster.proven ? "cannot grant now: this daemon cannot prove its etcd "
                                          "lease alive (cluster mode)"
                                        : "cannot grant now: the fencing state cannot be made "
                                          "durable",
                         out);
  }
}

void dispatcher::do_release(connection_info& conn, const request& req, tick now,
                            std::string& out) {
  events_.clear();
  lease_status st = req.has(field::keys) ? table_.release(keys_of(req), req.token, now, events_)
                                         : table_.release(req.key, req.token, now, events_);
  deliver_events(&conn, &out);
  if (req.noreply) return;  // the client asked not to wait a round trip for this
  if (st == lease_status::ok) {
    append_ok_reply(out, id_of(req));
  } else {
    reply_error(conn, &req, errc::not_held, "no lease with this key and token", out);
  }
}

void dispatcher::do_extend(connection_info& conn, const request& req, tick now,
                           std::string& out) {
  if (cluster.proven && !cluster.proven()) {
    return reply_error(conn, &req, errc::unavailable,
                       "cluster: this daemon cannot prove its etcd lease alive", out);
  }
  std::optional<std::uint32_t> ttl;
  if (req.has(field::ttl_ms)) ttl = static_cast<std::uint32_t>(req.ttl_ms);

  std::uint32_t applied = 0;
  events_.clear();
  lease_status st =
      req.has(field::keys)
          ? table_.extend(keys_of(req), req.token, ttl, now, events_, &applied)
          : table_.extend(req.key, req.token, ttl, now, events_, &applied);
  deliver_events(&conn, &out);
  if (st == lease_status::ok) {
    append_ok_reply(out, id_of(req), std::nullopt, applied);
  } else {
    reply_error(conn, &req, errc::not_held, "no lease with this key and token", out);
  }
}

void dispatcher::do_cancel(connection_info& conn, const request& req, tick now,
                           std::string& out) {
  events_.clear();
  bool found = table_.cancel(conn.owner, req.target, now, events_);
  deliver_events(&conn, &out);
  if (found) {
    append_reply(out, fresh(reply_, &req));
  } else {
    reply_error(conn, &req, errc::not_found, "no waiting acquire with that id", out);
  }
}

void dispatcher::do_inspect(connection_info& conn, const request& req, tick now,
                            std::string& out) {
  (void)conn;
  inspect_result info = table_.inspect(req.key, now);
  reply& r = fresh(reply_, &req);
  r.held = !info.holders.empty();
  r.waiters = info.waiters;
  r.limit = info.limit;
  for (const lease_view& h : info.holders) {
    holder_info hi;
    hi.token = h.token;
    hi.ttl_ms_left = h.ttl_ms_left;
    hi.mode = h.mode;
    hi.keys.assign(h.keys.begin(), h.keys.end());
    if (const connection_info* owner = delivery_.info_for(h.owner)) {
      hi.client = owner->client;
      hi.peer = owner->peer;
    }
    r.holders.push_back(std::move(hi));
  }
  if (cluster.view) r.cluster = cluster.view(req.key);
  append_reply(out, r);
}

stats_info dispatcher::current_stats(tick now) const {
  const table_counters& c = table_.counters();
  stats_info s;
  s.connections = delivery_.connections();
  s.keys = table_.keys();
  s.held = table_.held(now);
  s.waiting = table_.waiting();
  s.acquires = c.acquires;
  s.grants = c.grants;
  s.grants_shared = c.grants_shared;
  s.releases = c.releases;
  s.timeouts = c.timeouts;
  s.expirations = c.expirations;
  s.uptime_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now - started_).count());
  return s;
}

void dispatcher::do_stats(connection_info& conn, const request& req, tick now,
                          std::string& out) {
  (void)conn;
  reply& r = fresh(reply_, &req);
  r.stats = current_stats(now);
  append_reply(out, r);
}

void dispatcher::do_top(connection_info& conn, const request& req, tick now, std::string& out) {
  const std::size_t n = req.has(field::n) ? req.n : default_top_n;
  top_result top;
  if (conn.user == nullptr) {
    top = table_.top(n, now);
  } else {
    const user_account& u = *conn.user;
    top = table_.top(n, now, [&u](std::string_view key) {
      return (u.allowed(key) & (bit(permission::inspect) | bit(permission::admin))) != 0;
    });
  }
  reply& r = fresh(reply_, &req);
  r.stats = current_stats(now);
  r.queues.emplace();
  for (const top_queue& q : top.queues) {
    r.queues->push_back({std::string(q.key), q.waiters, q.held, q.limit, std::nullopt});
    if (cluster.view) r.queues->back().cluster = cluster.view(q.key);
  }
  r.oldest.emplace();
  for (const top_lease& l : top.oldest) {
    lease_info info;
    info.key = l.key;
    info.token = l.token;
    info.held_ms = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(l.held_for).count());
    info.ttl_ms_left = l.ttl_ms_left;
    if (const connection_info* owner = delivery_.info_for(l.owner)) {
      info.client = owner->client;
      info.peer = owner->peer;
    }
    r.oldest->push_back(std::move(info));
  }
  append_reply(out, r);
}

void dispatcher::deliver_events(const connection_info* current, std::string* current_out) {
  for (const table_event& ev : events_) {
    std::string* out = (current != nullptr && ev.owner == current->owner)
                           ? current_out
                           : delivery_.output_for(ev.owner);
    if (out == nullptr) continue;
    if (ev.kind == event_kind::granted) {  // the common case, without a reply to fill
      append_ok_reply(*out, ev.request_id, ev.token, ev.ttl_ms);
      continue;
    }
    reply& r = fresh(reply_, nullptr);
    r.id = ev.request_id;
    switch (ev.kind) {
      case event_kind::granted:
        break;
      case event_kind::wait_timeout:
        r.type = reply::kind::error;
        r.code = errc::timeout;
        r.message = "not granted within wait_ms";
        break;
      case event_kind::cancelled:
        r.type = reply::kind::error;
        r.code = errc::cancelled;
        r.message = "cancelled";
        break;
      case event_kind::busy:
        r.type = reply::kind::error;
        r.code = errc::timeout;
        r.message = "lock is not free";
        break;
      case event_kind::aborted:
        r.type = reply::kind::error;
        r.code = errc::shutting_down;
        r.message = "server is shutting down";
        break;
      case event_kind::expired:
        r.type = reply::kind::event;
        r.event = "expired";
        r.key = ev.key;
        r.keys = ev.keys;
        r.token = ev.token;
        break;
    }
    if (r.type == reply::kind::error) ++counters_.errors[static_cast<std::size_t>(r.code)];
    append_reply(*out, r);
  }
  events_.clear();
}

void dispatcher::run_and_deliver(const std::function<void(std::vector<table_event>&)>& fn) {
  events_.clear();
  fn(events_);
  deliver_events(nullptr, nullptr);
}

bool dispatcher::expire_due(tick now, std::size_t max_deadlines) {
  events_.clear();
  bool more = table_.expire_due(now, events_, max_deadlines);
  deliver_events(nullptr, nullptr);
  return more;
}

void dispatcher::half_close(const connection_info& conn, tick now, std::string& out) {
  events_.clear();
  table_.cancel_waiters(conn.owner, now, events_);
  deliver_events(&conn, &out);
}

void dispatcher::resume_grants(tick now) {
  events_.clear();
  table_.resume_grants(now, events_);
  deliver_events(nullptr, nullptr);
}

void dispatcher::disconnect(const connection_info& conn, tick now) {
  events_.clear();
  table_.disconnect(conn.owner, now, events_);
  deliver_events(nullptr, nullptr);
}

void dispatcher::abort_waiters() {
  events_.clear();
  table_.abort_waiters(events_);
  deliver_events(nullptr, nullptr);
}

}  // namespace keylock
