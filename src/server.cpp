#include "server.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <vector>

#include "asio_common.hpp"
#include "dispatch.hpp"
#include "fencing.hpp"
#include "keylock_version.hpp"
#include "lock_table.hpp"
#include "metrics.hpp"
#include "metrics_http.hpp"
#include "session.hpp"

namespace keylock {

namespace {

constexpr std::size_t scratch_bytes = 64u << 10;
constexpr std::chrono::milliseconds accept_retry{100};

std::uint64_t wall_clock_us() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

std::string endpoint_text(const tcp::endpoint& ep) {
  std::string addr = ep.address().to_string();
  if (ep.address().is_v6()) addr = "[" + addr + "]";
  return addr + ":" + std::to_string(ep.port());
}

asio::steady_timer::time_point to_time_point(tick t) {
  return asio::steady_timer::time_point(
      std::chrono::duration_cast<asio::steady_timer::duration>(t));
}

}  // namespace

struct server::impl final : session_host, delivery {
  explicit impl(config c)
      : settings_(std::move(c)),
        tokens_(settings_.state_dir, wall_clock_us(),
                [](const std::string& err) {
                  spdlog::error("fencing state: {}; tokens still increase in this run, but a "
                                "restart may reuse values if the clock steps back",
                                err);
                }),
        table_(table_limits{settings_.max_keys, settings_.max_waiters_per_key,
                            settings_.max_pending_per_connection, settings_.lock_delay_ms},
               tokens_),
        started_(now()),
        dispatcher_(settings_, table_, *this, started_),
        acceptor_(io_),
        signals_(io_, SIGINT, SIGTERM),
        deadline_timer_(io_),
        housekeeping_timer_(io_),
        accept_timer_(io_),
        scratch_(scratch_bytes) {
    dispatcher_.on_client_error = [](connection_info& conn, errc code, std::string_view msg) {
      if (conn.warned) return;
      conn.warned = true;  // once per connection: a misbehaving client must not flood the log
      spdlog::warn("peer {}{}{}: {}: {}", conn.peer, conn.client.empty() ? "" : " client ",
                   conn.client, to_string(code), msg);
    };
  }

  // --- session_host
  const config& settings() const override { return settings_; }
  dispatcher& dispatch() override { return dispatcher_; }
  tick now() const override { return std::chrono::steady_clock::now().time_since_epoch(); }
  std::vector<char>& scratch() override { return scratch_; }
  request& scratch_request() override { return request_; }

  void mark_dirty(owner_id owner) override {
    if (owner >= dirty_flag_.size()) dirty_flag_.resize(owner + 1, 0);
    if (dirty_flag_[owner]) return;
    dirty_flag_[owner] = 1;
    dirty_.push_back(owner);
  }

  void after_batch() override {
    // Index loop: flushing may close a session, whose released leases mark others dirty.
    for (std::size_t i = 0; i < dirty_.size(); ++i) {
      owner_id o = dirty_[i];
      dirty_flag_[o] = 0;
      if (o < sessions_.size() && sessions_[o]) sessions_[o]->flush();
    }
    dirty_.clear();
    arm_deadline();
    if (stopping_ && sessions_live_ == 0 && draining_.empty()) io_.stop();
  }

  void count_bytes(std::size_t received, std::size_t sent) override {
    bytes_in_ += received;
    bytes_out_ += sent;
  }

  void on_closed(session& s, bool graceful) override {
    owner_id o = s.info().owner;
    if (o < sessions_.size() && sessions_[o].get() == &s) {
      // Keep a draining session alive past its routing slot, which a new connection may reuse.
      if (graceful) draining_.push_back(sessions_[o]);
      sessions_[o].reset();
      --sessions_live_;
    }
    spdlog::debug("peer {}: closed", s.info().peer);
  }

  // --- delivery
  std::string* output_for(owner_id owner) override {
    if (owner >= sessions_.size() || !sessions_[owner] || sessions_[owner]->closed()) {
      return nullptr;
    }
    mark_dirty(owner);
    return &sessions_[owner]->output();
  }
  const connection_info* info_for(owner_id owner) const override {
    if (owner >= sessions_.size() || !sessions_[owner]) return nullptr;
    return &sessions_[owner]->info();
  }
  std::uint64_t connections() const override { return sessions_live_; }

  // --- listening and accepting
  std::optional<std::string> open() {
    if (auto err = tokens_.open()) return *err;
    std::string host;
    std::uint16_t port = 0;
    if (!split_host_port(settings_.listen, host, port)) return "bad listen address";
    error_code ec;
    if (host == "localhost") host = "127.0.0.1";
    auto address = asio::ip::make_address(host, ec);
    if (ec) return "cannot parse listen address " + settings_.listen + ": " + ec.message();
    tcp::endpoint ep(address, port);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return "cannot listen on " + settings_.listen + ": " + ec.message();
    auto bound = acceptor_.local_endpoint(ec);
    if (!settings_.metrics_listen.empty()) {
      metrics_ = std::make_unique<metrics_http>(
          io_, metrics_http::hooks{[this] { return render_prometheus(snapshot()); },
                                   [this] { return healthy(); }, [this] { return !stopping_; }});
      std::string metrics_bound;
      if (auto err = metrics_->listen(settings_.metrics_listen, &metrics_bound)) {
        return "cannot serve metrics on " + settings_.metrics_listen + ": " + *err;
      }
      spdlog::info("metrics on http://{}/metrics (health: /healthz, readiness: /readyz)",
                   metrics_bound);
    }
    spdlog::info(
        "keylockd {} listening on {} (protocol {}, max_connections {}, max_keys {}, "
        "max_frame_bytes {}, max_key_bytes {}, max_ttl_ms {}, max_waiters_per_key {}, "
        "max_pending_per_connection {}, max_output_bytes {}, idle_timeout_ms {}, "
        "lock_delay_ms {}, state_dir {}, auth {})",
        KEYLOCK_VERSION, endpoint_text(bound), protocol_version, settings_.max_connections,
        settings_.max_keys, settings_.max_frame_bytes, settings_.max_key_bytes,
        settings_.max_ttl_ms, settings_.max_waiters_per_key,
        settings_.max_pending_per_connection, settings_.max_output_bytes,
        settings_.idle_timeout_ms, settings_.lock_delay_ms,
        settings_.state_dir.empty() ? "(none: tokens rest on the clock)" : settings_.state_dir,
        settings_.auth.empty() ? "off" : "on");
    return std::nullopt;
  }

  void do_accept() {
    acceptor_.async_accept([this](const error_code& ec, tcp::socket socket) {
      on_accept(ec, std::move(socket));
    });
  }

  void on_accept(const error_code& ec, tcp::socket socket) {
    if (stopping_) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // EMFILE and friends: back off instead of spinning on a listen queue we cannot drain.
      spdlog::warn("accept failed: {}; retrying in {} ms", ec.message(), accept_retry.count());
      accept_timer_.expires_after(accept_retry);
      accept_timer_.async_wait([this](const error_code& e) {
        if (!e && !stopping_) do_accept();
      });
      return;
    }
    error_code pe;
    auto remote = socket.remote_endpoint(pe);
    std::string peer = pe ? std::string("?") : endpoint_text(remote);
    if (sessions_live_ >= settings_.max_connections) {
      refuse(socket, peer);
    } else {
      ++accepted_;
      owner_id owner = table_.connect();
      if (owner >= sessions_.size()) sessions_.resize(owner + 1);
      sessions_[owner] = std::make_shared<session>(std::move(socket), *this, owner, peer);
      ++sessions_live_;
      sessions_[owner]->start();
    }
    do_accept();
  }

  void refuse(tcp::socket& socket, const std::string& peer) {
    static constexpr std::string_view line =
        "{\"ok\":false,\"error\":\"limit_exceeded\",\"message\":\"too many connections\"}\n";
    error_code ignored;
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(line.data(), line.size()), ignored);
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    ++refused_;
    auto t = now();
    if (t - last_refusal_log_ > std::chrono::seconds(1)) {
      last_refusal_log_ = t;
      spdlog::warn("peer {}: refused, max_connections ({}) reached ({} refused so far)", peer,
                   settings_.max_connections, refused_);
    }
  }

  // --- the one deadline timer
  void arm_deadline() {
    auto next = table_.next_deadline();
    if (!next || (armed_ && *armed_ <= *next)) return;
    armed_ = next;
    std::uint64_t gen = ++timer_generation_;
    deadline_timer_.expires_at(to_time_point(*next));
    deadline_timer_.async_wait([this, gen](const error_code& ec) {
      if (ec || gen != timer_generation_) return;  // re-armed earlier, or cancelled
      armed_.reset();
      dispatcher_.expire_due(now());
      after_batch();
    });
  }

  // --- idle connections and draining sockets
  std::chrono::milliseconds housekeeping_period() const {
    std::chrono::milliseconds p{250};
    if (settings_.idle_timeout_ms > 0) {
      p = std::min(p, std::chrono::milliseconds(std::max<std::uint32_t>(
                          settings_.idle_timeout_ms / 4, 10)));
    }
    return p;
  }

  void do_housekeeping() {
    housekeeping_timer_.expires_after(housekeeping_period());
    housekeeping_timer_.async_wait([this](const error_code& ec) {
      if (ec) return;
      on_housekeeping();
      do_housekeeping();
    });
  }

  // The probe is answered by this same event loop, so an answer at all shows it turns; a
  // housekeeping tick overdue by seconds shows it is stalled behind something.
  bool healthy() const { return now() - last_housekeeping_ < std::chrono::seconds(2); }

  metrics_snapshot snapshot() const {
    metrics_snapshot m;
    const table_counters& c = table_.counters();
    m.connections = sessions_live_;
    m.keys = table_.keys();
    m.held = table_.held();
    m.waiting = table_.waiting();
    m.acquires = c.acquires;
    m.grants = c.grants;
    m.releases = c.releases;
    m.extends = c.extends;
    m.timeouts = c.timeouts;
    m.cancels = c.cancels;
    m.expirations = c.expirations;
    m.disconnect_releases = c.disconnect_releases;
    m.connections_accepted = accepted_;
    m.connections_refused = refused_;
    m.errors = dispatcher_.counters().errors;
    m.bytes_in = bytes_in_;
    m.bytes_out = bytes_out_;
    m.wait = c.wait;
    m.hold = c.hold;
    m.start_time_seconds = start_unix_seconds_;
    m.version = KEYLOCK_VERSION;
    return m;
  }

  void on_housekeeping() {
    tick t = now();
    last_housekeeping_ = t;
    // While stopping, draining sockets get the whole grace period (poll_shutdown ends it).
    std::erase_if(draining_, [this, t](const std::shared_ptr<session>& s) {
      if (!stopping_ && !s->finished() && s->drain_deadline() != tick{0} &&
          t >= s->drain_deadline()) {
        s->abort();
      }
      return s->finished();
    });
    if (settings_.idle_timeout_ms > 0 && !stopping_) {
      auto idle = std::chrono::milliseconds(settings_.idle_timeout_ms);
      for (auto& s : sessions_) {
        if (!s || s->closed()) continue;
        owner_id o = s->info().owner;
        if (t - s->last_active() < idle || table_.owner_leases(o) > 0 ||
            table_.owner_waiters(o) > 0) {
          continue;
        }
        spdlog::info("peer {}: idle for {} ms with no lease or waiter; closing", s->info().peer,
                     settings_.idle_timeout_ms);
        s->close(false);
      }
    }
    after_batch();
  }

  // --- shutdown
  void on_signal(const error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("signal {}: shutting down ({} connections, {} leases, {} waiters)", signo,
                 sessions_live_, table_.held(), table_.waiting());
    stopping_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    accept_timer_.cancel();
    dispatcher_.abort_waiters();
    for (auto& s : sessions_) {
      if (s) s->close(true);
    }
    after_batch();
    shutdown_timer_deadline_ = now() + std::chrono::milliseconds(settings_.shutdown_grace_ms);
    poll_shutdown();
  }

  void poll_shutdown() {
    if (sessions_live_ == 0 && draining_.empty()) return io_.stop();
    if (now() >= shutdown_timer_deadline_) {
      for (auto& s : draining_) s->abort();
      return io_.stop();
    }
    accept_timer_.expires_after(std::chrono::milliseconds(10));
    accept_timer_.async_wait([this](const error_code&) {
      std::erase_if(draining_, [](const std::shared_ptr<session>& s) { return s->finished(); });
      poll_shutdown();
    });
  }

  int run() {
    signals_.async_wait([this](const error_code& ec, int signo) { on_signal(ec, signo); });
    do_accept();
    do_housekeeping();
    io_.run();
    spdlog::info("keylockd stopped");
    return 0;
  }

  config settings_;
  asio::io_context io_{1};
  fencing_tokens tokens_;
  lock_table table_;
  tick started_;
  dispatcher dispatcher_;
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  asio::steady_timer deadline_timer_;
  asio::steady_timer housekeeping_timer_;
  asio::steady_timer accept_timer_;
  std::optional<tick> armed_;
  std::uint64_t timer_generation_ = 0;
  std::vector<std::shared_ptr<session>> sessions_;  // by owner id
  std::vector<std::shared_ptr<session>> draining_;  // closed, flushing their last reply
  std::size_t sessions_live_ = 0;
  std::vector<owner_id> dirty_;
  std::vector<std::uint8_t> dirty_flag_;
  std::vector<char> scratch_;
  request request_;
  bool stopping_ = false;
  tick shutdown_timer_deadline_{0};
  std::uint64_t refused_ = 0;
  std::uint64_t accepted_ = 0;
  std::uint64_t bytes_in_ = 0;
  std::uint64_t bytes_out_ = 0;
  tick last_refusal_log_{0};
  tick last_housekeeping_ = now();
  double start_unix_seconds_ =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::unique_ptr<metrics_http> metrics_;  // last: closed first, before the io_context
};

server::server(config settings) : impl_(std::make_unique<impl>(std::move(settings))) {}
server::~server() = default;
std::optional<std::string> server::open() { return impl_->open(); }
int server::run() { return impl_->run(); }

}  // namespace keylock
