#include "server.hpp"

#include <sys/random.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <deque>
#include <fstream>
#include <sstream>
#include <vector>

#include "asio_common.hpp"  // first: <utility> before any Asio header

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "cluster/coordinator.hpp"
#ifdef KEYLOCK_CLUSTER
#include "cluster/cluster_runtime.hpp"
#endif
#include "dispatch.hpp"
#include "fencing.hpp"
#include "keylock_version.hpp"
#include "lock_table.hpp"
#include "metrics.hpp"
#include "metrics_http.hpp"
#include "session.hpp"
#include "tls_session.hpp"

namespace keylock {

namespace {

constexpr std::size_t scratch_bytes = 64u << 10;
constexpr std::chrono::milliseconds accept_retry{100};
// Deadlines processed per turn of the event loop. When many leases run out at once, the
// events of one batch are flushed (and max_output_bytes applied) before the next batch runs,
// and other connections are served in between.
constexpr std::size_t expiry_batch = 4096;
// After a failed fencing reservation, how long until the next try.
constexpr std::chrono::seconds reservation_retry{1};

// 128 random bits for the key index's hash, so that keys cannot be crafted to collide.
hash_seed random_hash_seed() {
  std::uint64_t words[2] = {0, 0};
  std::size_t got = 0;
  while (got < sizeof words) {
    ssize_t n = ::getrandom(reinterpret_cast<char*>(words) + got, sizeof words - got, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      // No entropy source at all: fall back to the clock, still different in every process.
      words[0] ^= static_cast<std::uint64_t>(
          std::chrono::steady_clock::now().time_since_epoch().count());
      words[1] ^= static_cast<std::uint64_t>(::getpid()) * 0x9e3779b97f4a7c15ull;
      break;
    }
    got += static_cast<std::size_t>(n);
  }
  hash_seed seed;
  seed.k0 = words[0];
  seed.k1 = words[1];
  return seed;
}

std::uint64_t wall_clock_us() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

asio::steady_timer::time_point to_time_point(tick t) {
  return asio::steady_timer::time_point(
      std::chrono::duration_cast<asio::steady_timer::duration>(t));
}

}  // namespace

// Cluster mode: the coordinator's etcd requests, passed on to the runtime once it exists.
struct forward_port final : etcd_port {
  etcd_port* to = nullptr;
  void create(const std::string& key, const std::string& etcd_key, std::int64_t lease,
              const std::string& leaving) override {
    if (to != nullptr) to->create(key, etcd_key, lease, leaving);
  }
  void remove(const std::string& key, const std::string& etcd_key) override {
    if (to != nullptr) to->remove(key, etcd_key);
  }
  void bump_revision() override {
    if (to != nullptr) to->bump_revision();
  }
};

struct server::impl final : session_host, delivery {
  explicit impl(config c)
      : settings_(std::move(c)),
        tokens_(settings_.state_dir, wall_clock_us(), settings_.fencing_block),
        coordinator_(make_coordinator()),
        table_(limits_of(settings_),
               coordinator_ ? static_cast<token_source&>(*coordinator_) : tokens_,
               table_histograms{&wait_hist_, &hold_hist_}, random_hash_seed(), coordinator_.get()),
        started_(now()),
        dispatcher_(settings_, table_, *this, started_),
        acceptor_(io_),
        tls_acceptor_(io_),
        signals_(io_, SIGINT, SIGTERM),
        reload_signal_(io_, SIGHUP),
        deadline_timer_(io_),
        housekeeping_timer_(io_),
        accept_timer_(io_),
        tls_accept_timer_(io_),
        reservation_timer_(io_),
        cluster_timer_(io_),
        watchdog_timer_(io_),
        scratch_(scratch_bytes) {
    if (coordinator_) {
      coordinator_->attach(table_);
      table_.set_try_wait(settings_.etcd_timeout_ms);
      dispatcher_.cluster.ttl_cap = [this](tick t) { return coordinator_->ttl_cap(t); };
      dispatcher_.cluster.proven = [this] { return now() < cluster_proven_until(); };
      dispatcher_.cluster.view = [this](std::string_view key) { return coordinator_->view(key); };
    }
    dispatcher_.on_client_error = [](connection_info& conn, errc code, std::string_view msg) {
      if (conn.warned) return;
      conn.warned = true;  // once per connection: a misbehaving client must not flood the log
      spdlog::warn("peer {}{}{}: {}: {}", conn.peer, conn.client.empty() ? "" : " client ",
                   conn.client, to_string(code), msg);
    };
  }

  static table_limits limits_of(const config& c) {
    table_limits l;
    l.max_keys = c.max_keys;
    l.max_waiters_per_key = c.max_waiters_per_key;
    l.max_pending_per_owner = c.max_pending_per_connection;
    l.max_leases_per_owner = c.max_leases_per_connection;
    l.max_leases = c.max_leases;
    l.lock_delay_ms = c.lock_delay_ms;
    return l;
  }

  bool auth_required() const { return dispatcher_.auth_required(); }

  // --- cluster mode
  std::unique_ptr<coordinator> make_coordinator() {
    if (settings_.etcd_endpoints.empty()) return nullptr;
    coordinator_options o;
    o.prefix = settings_.etcd_prefix;
    o.handoff_limit = settings_.handoff_limit;
    o.idle_keep = std::chrono::milliseconds(settings_.idle_keep_ms);
    o.max_ttl_ms = settings_.max_ttl_ms;
    return std::make_unique<coordinator>(o, port_, [this] { return cluster_proven_until(); });
  }

  tick cluster_proven_until() const {
#ifdef KEYLOCK_CLUSTER
    if (runtime_) return runtime_->proven_until().time_since_epoch();
#endif
    return tick{0};
  }

  // Runs a coordinator step on the loop and delivers what it changed.
  void cluster_step(const std::function<void(tick, std::vector<table_event>&)>& fn) {
    const tick t = now();
    dispatcher_.run_and_deliver([&](std::vector<table_event>& ev) { fn(t, ev); });
    after_batch();
  }

  std::optional<std::string> start_cluster(const std::string& bound) {
    if (!coordinator_) return std::nullopt;
#ifndef KEYLOCK_CLUSTER
    (void)bound;
    return std::string("etcd_endpoints is set but this keylockd was built without cluster mode "
                       "(KEYLOCK_BUILD_CLUSTER=OFF)");
#else
    cluster_runtime_options o;
    o.etcd.endpoints = etcd_endpoint_list(settings_.etcd_endpoints);
    o.etcd.rpc_timeout = std::chrono::milliseconds(settings_.etcd_timeout_ms);
    auto slurp = [](const std::string& path, std::string* out) -> std::optional<std::string> {
      if (path.empty()) return std::nullopt;
      std::ifstream in(path, std::ios::binary);
      if (!in) return "cannot read " + path;
      std::ostringstream text;
      text << in.rdbuf();
      *out = text.str();
      return std::nullopt;
    };
    for (auto [path, out] : {std::pair{&settings_.etcd_ca_file, &o.etcd.ca_pem},
                             std::pair{&settings_.etcd_cert_file, &o.etcd.cert_pem},
                             std::pair{&settings_.etcd_key_file, &o.etcd.key_pem}}) {
      if (auto err = slurp(*path, out)) return *err;
    }
    if (!settings_.etcd_user.empty()) {
      o.etcd.user = settings_.etcd_user;
      if (auto err = read_auth_file(settings_.etcd_password_file, o.etcd.password)) return *err;
    }
    o.session.lease_ttl = std::chrono::seconds((settings_.etcd_lease_ttl_ms + 999) / 1000);
    o.prefix = settings_.etcd_prefix;
    o.node = settings_.node_name.empty() ? bound : settings_.node_name;
    node_name_ = o.node;
    cluster_events ev;
    ev.session_up = [this](std::int64_t lease) {
      spdlog::info("cluster: etcd lease {:x} granted; node {}", lease, node_name_);
      cluster_step([&](tick t, auto& out) { coordinator_->session_up(lease, t, out); });
    };
    ev.session_lost = [this] {
      spdlog::error("cluster: etcd lease could not be kept alive; every lease is lost and "
                    "acquires answer unavailable until a new one is granted");
      cluster_step([&](tick t, auto& out) { coordinator_->session_lost(t, out); });
    };
    ev.created = [this](const std::string& key, const std::string& etcd_key, bool ok,
                        std::int64_t rev) {
      cluster_step([&](tick t, auto& out) { coordinator_->on_created(key, etcd_key, ok, rev, t, out); });
    };
    ev.removed = [this](const std::string& key, const std::string& etcd_key, bool ok) {
      cluster_step([&](tick t, auto& out) { coordinator_->on_removed(key, etcd_key, ok, t, out); });
    };
    ev.revision = [this](std::int64_t rev) {
      cluster_step([&](tick t, auto& out) { coordinator_->on_revision(rev, t, out); });
    };
    ev.snapshot = [this](std::int64_t rev, const std::vector<etcd_kv>& kvs) {
      cluster_step([&](tick t, auto& out) { coordinator_->on_snapshot(rev, kvs, t, out); });
    };
    ev.watch = [this](const etcd_watch_batch& batch) {
      cluster_step([&](tick t, auto& out) { coordinator_->on_watch(batch, t, out); });
    };
    ev.health = [this](etcd_path path, bool reachable, const std::string& reason) {
      std::string& problem = etcd_problems_[static_cast<std::size_t>(path)];
      const char* what = path == etcd_path::lease ? "lease" : "watch";
      if (!reachable && problem != reason) {
        spdlog::warn("cluster: etcd: {} (the {} path)", reason, what);
      } else if (reachable && !problem.empty()) {
        spdlog::info("cluster: etcd reachable again (the {} path)", what);
      }
      problem = reachable ? std::string() : reason;
    };
    ev.round_trip = [this](std::chrono::nanoseconds d) { etcd_rtt_.observe(d); };
    runtime_ = std::make_unique<cluster_runtime>(
        o, [this](std::function<void()> fn) { asio::post(io_, std::move(fn)); }, ev);
    port_.to = runtime_.get();
    runtime_->start();
    spdlog::info("cluster: node {} on etcd {} (prefix {}, lease ttl {} s, handoff_limit {}, "
                 "idle_keep_ms {})",
                 node_name_, settings_.etcd_endpoints, settings_.etcd_prefix,
                 o.session.lease_ttl.count(), settings_.handoff_limit, settings_.idle_keep_ms);
    return std::nullopt;
#endif
  }

  void arm_cluster_timer() {
    if (!coordinator_) return;
    auto next = coordinator_->next_deadline();
    if (!next || (cluster_armed_ && *cluster_armed_ <= *next)) return;
    cluster_armed_ = next;
    cluster_timer_.expires_at(to_time_point(*next));
    cluster_timer_.async_wait([this](const error_code& ec) {
      if (ec) return;
      cluster_armed_.reset();
      cluster_step([&](tick t, auto& out) { coordinator_->process(t, out); });
    });
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
    if (coordinator_ && coordinator_->has_work()) {
      // What the table told the gate during this batch (demand, quiet keys): act on it.
      const tick t = now();
      dispatcher_.run_and_deliver(
          [&](std::vector<table_event>& ev) { coordinator_->process(t, ev); });
    }
    // Index loop: flushing may close a session, whose released leases mark others dirty.
    for (std::size_t i = 0; i < dirty_.size(); ++i) {
      owner_id o = dirty_[i];
      dirty_flag_[o] = 0;
      if (o < sessions_.size() && sessions_[o]) sessions_[o]->flush();
    }
    dirty_.clear();
    arm_deadline();
    arm_cluster_timer();
    if (!coordinator_) maybe_reserve_tokens();
    if (stopping_ && sessions_live_ == 0 && draining_.empty()) io_.stop();
  }

  // The reactor queues the completions of one epoll_wait together, so a handler posted by the
  // first of them runs after the last. Once wake-ups come with reads on several sessions (load),
  // every reply of a wake-up waits for that handler, and they go out in one burst, as Redis
  // writes its replies before it sleeps: wake-ups of the clients sent together cost less. A
  // wake-up that followed one with a single read is answered at once: a lone client waits
  // for nothing (the handler would come after another epoll_wait).
  void after_reads() override {
    if (batch_open_) {
      ++batch_reads_;
      return;
    }
    batch_open_ = true;
    batch_reads_ = 1;
    if (last_batch_reads_ <= 1) after_batch();
    asio::post(io_, [this] {
      batch_open_ = false;
      last_batch_reads_ = batch_reads_;
      after_batch();
      resume_reads_later();
    });
  }

  // A session that has read waits for its next input. Asio 1.18 starts every read with a
  // speculative recv, and right after a read that recv finds nothing and costs a wasted system
  // call (EAGAIN) before the reactor waits. Under load (a batch of several reads) the session's
  // next read is started after the next batch instead: its client has mostly answered by then,
  // so the speculative recv reads it, and the reactor's edge for those bytes, consumed while no
  // read waited, loses nothing. A read that was answered at once (a lone client) reads again
  // at once: it has no batch to wait behind.
  bool defer_read(session& s) override {
    if (!batch_open_ || (batch_reads_ <= 1 && last_batch_reads_ <= 1)) return false;
    reads_deferred_.push_back(s.shared_from_this());
    return true;
  }

  // Posted from the end of a batch, so it runs behind the next batch's reads.
  void resume_reads_later() {
    if (reads_deferred_.empty() || resume_posted_) return;
    resume_posted_ = true;
    reads_resuming_.swap(reads_deferred_);
    asio::post(io_, [this] {
      resume_posted_ = false;
      for (auto& s : reads_resuming_) s->resume_reading();
      reads_resuming_.clear();
      resume_reads_later();
    });
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
      if (auth_required() && !s.info().authenticated) --unauthenticated_;
    }
    spdlog::debug("peer {}: closed", s.info().peer);
  }

  void on_socket_closed(session& /*s*/) override { --sockets_open_; }

  void on_authenticated(session& /*s*/) override {
    if (auth_required()) --unauthenticated_;
  }

  void on_peer_certificate(session& s, std::string_view subject) override {
    const auto& users = dispatcher_.users();
    auto user = users ? users->find_by_subject(subject) : nullptr;
    if (user == nullptr) {
      spdlog::debug("peer {}: client certificate {}", s.info().peer, subject);
      return;
    }
    s.info().user = std::move(user);
    spdlog::info("peer {}: logged in as user '{}' by its certificate", s.info().peer,
                 s.info().user->name);
    if (!s.info().authenticated) {
      s.info().authenticated = true;
      on_authenticated(s);
    }
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

  // --- fencing reservations, written on the background thread
  void maybe_reserve_tokens() {
    if (reservation_waiting_) return;
    auto mark = tokens_.reservation_due();
    if (!mark) return;
    tokens_.reservation_started();
    asio::post(disk_, [this, m = *mark] {
      auto err = tokens_.write(m);
      asio::post(io_, [this, m, err] { on_reserved(m, err); });
    });
  }

  void on_reserved(std::uint64_t mark, const std::optional<std::string>& err) {
    const bool was_ready = tokens_.ready();
    const bool was_failing = !tokens_.error().empty();
    tokens_.reservation_done(mark, err);
    if (err) {
      if (!was_failing) {
        spdlog::error("fencing state: cannot reserve tokens up to {}: {}; {} tokens left before "
                      "acquires are answered unavailable; retrying every {} s",
                      mark, *err, tokens_.ready() ? tokens_.durable_mark() - tokens_.peek() : 0,
                      reservation_retry.count());
      }
      reservation_waiting_ = true;
      reservation_timer_.expires_after(reservation_retry);
      reservation_timer_.async_wait([this](const error_code& ec) {
        if (ec) return;
        reservation_waiting_ = false;
        maybe_reserve_tokens();
      });
      return;
    }
    if (was_failing) spdlog::info("fencing state: tokens reserved up to {} again", mark);
    if (!was_ready) {
      dispatcher_.resume_grants(now());
      after_batch();
    }
  }

  // Why the daemon cannot grant, for /healthz and /readyz; empty when it can.
  std::string degraded_reason() const {
    if (coordinator_) {
      // The lease's problem first: without a lease nothing is granted.
      const std::string& problem =
          etcd_problems_[0].empty() ? etcd_problems_[1] : etcd_problems_[0];
      if (!coordinator_->up() || now() >= cluster_proven_until()) {
        return "cluster: no etcd lease proven alive" +
               (problem.empty() ? std::string() : " (" + problem + ")") +
               "; acquires answer unavailable";
      }
      if (!coordinator_->mirrored()) {
        return "cluster: etcd watch not synced yet" +
               (problem.empty() ? std::string() : " (" + problem + ")");
      }
      if (!problem.empty()) return "cluster: etcd: " + problem;
      return {};
    }
    if (tokens_.ready()) return {};
    return "fencing state not durable (" + tokens_.error() + "); acquires answer unavailable";
  }

  // --- listening and accepting
  std::optional<std::string> open() {
    if (!coordinator_) {
      if (auto err = tokens_.open()) return *err;
    }
    if (!settings_.users_file.empty()) {
      std::string err;
      auto users = user_directory::load(settings_.users_file, err);
      if (!users) return err;
      spdlog::info("users_file {}: {} users", settings_.users_file, users->size());
      dispatcher_.set_users(std::move(users));
    }
    tcp::endpoint bound;
    if (auto err = open_listener(acceptor_, settings_.listen, bound)) return "listen: " + *err;
    if (!settings_.listen_tls.empty() || settings_.metrics_tls != 0) {
      auto made = make_tls_context(settings_);
      if (auto* err = std::get_if<std::string>(&made)) return "TLS: " + *err;
      tls_context_ = std::get<std::shared_ptr<asio::ssl::context>>(std::move(made));
    }
    if (!settings_.listen_tls.empty()) {
      tcp::endpoint tls_bound;
      if (auto err = open_listener(tls_acceptor_, settings_.listen_tls, tls_bound)) {
        return "listen_tls: " + *err;
      }
      spdlog::info(
          "TLS on {} (TLS 1.2 or later; client certificates {})", endpoint_text(tls_bound),
          settings_.tls_ca_file.empty() ? "not asked for" : "required, signed by tls_ca_file");
    }
    if (auto err = start_cluster(endpoint_text(bound))) return *err;
    if (!settings_.metrics_listen.empty()) {
      metrics_ = std::make_unique<metrics_http>(
          io_, metrics_http::hooks{[this] { return render_prometheus(snapshot()); },
                                   [this] { return health_probe(); },
                                   [this] { return readiness_probe(); }});
      if (settings_.metrics_tls != 0) metrics_->set_tls(tls_context_);
      std::string metrics_bound;
      if (auto err = metrics_->listen(settings_.metrics_listen, &metrics_bound)) {
        return "cannot serve metrics on " + settings_.metrics_listen + ": " + *err;
      }
      spdlog::info("metrics on {}://{}/metrics (health: /healthz, readiness: /readyz)",
                   settings_.metrics_tls != 0 ? "https" : "http", metrics_bound);
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

  // Accepts on the plain port, or with `tls` on the TLS port.
  void do_accept(bool tls = false) {
    (tls ? tls_acceptor_ : acceptor_)
        .async_accept([this, tls](const error_code& ec, tcp::socket socket) {
          on_accept(ec, std::move(socket), tls);
        });
  }

  void on_accept(const error_code& ec, tcp::socket socket, bool tls) {
    if (stopping_) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // EMFILE and friends: back off instead of spinning on a listen queue we cannot drain.
      spdlog::warn("accept failed: {}; retrying in {} ms", ec.message(), accept_retry.count());
      asio::steady_timer& retry = tls ? tls_accept_timer_ : accept_timer_;
      retry.expires_after(accept_retry);
      retry.async_wait([this, tls](const error_code& e) {
        if (!e && !stopping_) do_accept(tls);
      });
      return;
    }
    error_code pe;
    auto remote = socket.remote_endpoint(pe);
    std::string peer = pe ? std::string("?") : endpoint_text(remote);
    // Closing sessions count too: their descriptors are open until their close is done.
    if (sockets_open_ >= settings_.max_connections) {
      refuse(socket, peer);
    } else {
      if (auth_required() && unauthenticated_ >= settings_.max_unauthenticated_connections) {
        evict_oldest_unauthenticated();
      }
      ++accepted_;
      owner_id owner = table_.connect();
      if (owner >= sessions_.size()) sessions_.resize(owner + 1);
      auto s = tls ? make_tls_session(std::move(socket), tls_context_, *this, owner, peer)
                   : make_tcp_session(std::move(socket), *this, owner, peer);
      sessions_[owner] = s;
      ++sessions_live_;
      ++sockets_open_;
      if (auth_required()) {
        ++unauthenticated_;
        unauthenticated_order_.push_back(s);
      }
      s->start();
    }
    after_batch();
    do_accept(tls);
  }

  // Connections that have not authenticated, oldest first; entries that have authenticated or
  // closed since are skipped (and dropped once they reach the front).
  std::shared_ptr<session> oldest_unauthenticated() {
    while (!unauthenticated_order_.empty()) {
      auto s = unauthenticated_order_.front().lock();
      if (s && !s->closed() && !s->info().authenticated) return s;
      unauthenticated_order_.pop_front();
    }
    return nullptr;
  }

  // Makes room under max_unauthenticated_connections: a client that has not passed hello
  // cannot hold a slot against a newcomer, so a flood of them cannot lock out a client that
  // has the secret.
  void evict_oldest_unauthenticated() {
    if (auto s = oldest_unauthenticated()) {
      if (!s->info().warned) {
        s->info().warned = true;
        spdlog::warn("peer {}: closed before hello to make room for a new connection "
                     "(max_unauthenticated_connections {})",
                     s->info().peer, settings_.max_unauthenticated_connections);
      }
      close_with_error(*s, "closed to make room: authenticate with hello sooner");
    }
  }

  // Answers `unauthenticated` and closes at once (the reply goes out if the kernel takes it).
  static void close_with_error(session& s, std::string_view message) {
    std::string& out = s.output();
    out += R"({"ok":false,"error":"unauthenticated","message":")";
    out += message;
    out += "\"}\n";
    s.flush();
    s.abort();
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
      // A bounded batch: what remains due re-arms the timer for "now", so it runs on a later
      // turn of the loop, after the output of this batch is flushed.
      dispatcher_.expire_due(now(), expiry_batch);
      after_batch();
    });
  }

  // --- idle connections and draining sockets
  // Often enough that every deadline is enforced within a quarter of its length (at least
  // every 10 ms, at most every 250 ms).
  std::chrono::milliseconds housekeeping_period() const {
    std::uint32_t p = 250;
    auto within = [&p](std::uint32_t timeout_ms) {
      if (timeout_ms > 0) p = std::min(p, std::max<std::uint32_t>(timeout_ms / 4, 10));
    };
    within(settings_.idle_timeout_ms);
    within(settings_.write_timeout_ms);
    if (auth_required()) within(settings_.auth_timeout_ms);
    return std::chrono::milliseconds(p);
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
  // housekeeping tick overdue by seconds shows it is stalled behind something. A daemon that
  // cannot grant is alive (restarting it would not mend a full disk, and would drop every
  // lease): healthy, with the reason; not ready.
  metrics_http::probe health_probe() const {
    if (now() - last_housekeeping_ >= std::chrono::seconds(2)) {
      return {false, "event loop stalled"};
    }
    return {true, degraded_reason()};
  }

  metrics_http::probe readiness_probe() const {
    if (stopping_) return {false, "shutting down"};
    std::string reason = degraded_reason();
    return {reason.empty(), std::move(reason)};
  }

  metrics_snapshot snapshot() const {
    metrics_snapshot m;
    const table_counters& c = table_.counters();
    m.connections = sessions_live_;
    m.keys = table_.keys();
    m.held = table_.held(now());
    m.waiting = table_.waiting();
    m.acquires = c.acquires;
    m.grants = c.grants;
    m.grants_shared = c.grants_shared;
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
    m.wait = wait_hist_;
    m.hold = hold_hist_;
    if (coordinator_) {
      const coordinator_counters& cc = coordinator_->counters();
      m.cluster = true;
      m.cluster_up = coordinator_->up() && now() < cluster_proven_until();
      m.rights_held = coordinator_->rights_held();
      m.global_acquisitions = cc.global_acquisitions;
      m.local_handoffs = cc.local_handoffs;
      m.remote_handoffs = cc.remote_handoffs;
      m.idle_releases = cc.idle_releases;
      m.sessions_lost = cc.sessions_lost;
      m.etcd_round_trip = etcd_rtt_;
    }
    m.start_time_seconds = start_unix_seconds_;
    m.version = KEYLOCK_VERSION;
    return m;
  }

  bool write_timed_out(const session& s, tick t) const {
    auto since = s.write_stalled_since();
    return since && t - *since >= std::chrono::milliseconds(settings_.write_timeout_ms);
  }

  void on_housekeeping() {
    tick t = now();
    last_housekeeping_ = t;
    // While stopping, draining sockets get the whole grace period (poll_shutdown ends it).
    std::erase_if(draining_, [this, t](const std::shared_ptr<session>& s) {
      if (!stopping_ && !s->finished() &&
          ((s->close_deadline() != tick{0} && t >= s->close_deadline()) ||
           write_timed_out(*s, t))) {
        s->abort();
      }
      return s->finished();
    });
    if (stopping_) return after_batch();
    if (auth_required()) {
      const auto limit = std::chrono::milliseconds(settings_.auth_timeout_ms);
      for (auto s = oldest_unauthenticated(); s && t - s->connected_at() >= limit;
           s = oldest_unauthenticated()) {
        spdlog::info("peer {}: no hello within auth_timeout_ms ({}); closing", s->info().peer,
                     settings_.auth_timeout_ms);
        close_with_error(*s, "no hello within auth_timeout_ms");
      }
    }
    const auto idle = std::chrono::milliseconds(settings_.idle_timeout_ms);
    for (auto& s : sessions_) {
      if (!s || s->closed()) continue;
      if (write_timed_out(*s, t)) {
        spdlog::warn("peer {}: replies unread for {} ms (write_timeout_ms); closing",
                     s->info().peer, settings_.write_timeout_ms);
        s->close(false);
        continue;
      }
      if (settings_.idle_timeout_ms == 0 || t - s->last_active() < idle) continue;
      owner_id o = s->info().owner;
      if (table_.owner_leases(o) > 0 || table_.owner_waiters(o) > 0) continue;
      spdlog::info("peer {}: idle for {} ms with no lease or waiter; closing", s->info().peer,
                   settings_.idle_timeout_ms);
      s->close(false);
    }
    after_batch();
  }

  // --- systemd (sd_notify; each call is a no-op without $NOTIFY_SOCKET)

  // With WatchdogSec, systemd restarts a daemon that stops pinging. The pings come from a
  // timer on the event loop, at half the interval: a wedged loop stops them.
  void start_watchdog() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return;
    watchdog_every_ = std::chrono::microseconds(usec / 2);
    spdlog::info("systemd watchdog: pinging every {} ms", watchdog_every_.count() / 1000);
    ping_watchdog();
  }

  void ping_watchdog() {
    sd_notify(0, "WATCHDOG=1");
    watchdog_timer_.expires_after(watchdog_every_);
    watchdog_timer_.async_wait([this](const error_code& ec) {
      if (!ec && !stopping_) ping_watchdog();
    });
  }

  // --- shutdown
  void wait_reload_signal() {
    reload_signal_.async_wait([this](const error_code& ec, int) {
      if (ec) return;
      reload();
      wait_reload_signal();
    });
  }

  // SIGHUP: re-read auth_file, users_file and the TLS files. What cannot be read keeps the
  // old setting.
  void reload() {
    if (settings_.auth_file.empty() && settings_.users_file.empty() &&
        settings_.listen_tls.empty() && settings_.metrics_tls == 0) {
      spdlog::info("SIGHUP: no auth_file, users_file or TLS files to re-read; nothing to reload");
      return;
    }
    sd_notify(0, "RELOADING=1");
    reload_auth_file();
    reload_users_file();
    reload_tls();
    sd_notify(0, "READY=1");
  }

  // Logged-in connections move to the new accounts of their users (changed rules apply from
  // their next op); those whose user is gone are closed, which releases their leases.
  void reload_users_file() {
    if (settings_.users_file.empty()) return;
    std::string err;
    auto users = user_directory::load(settings_.users_file, err);
    if (!users) {
      spdlog::error("SIGHUP: {}; keeping the current users", err);
      return;
    }
    std::size_t closed = 0;
    for (std::size_t i = 0; i < sessions_.size(); ++i) {
      std::shared_ptr<session> s = sessions_[i];  // a copy: closing it empties its slot
      if (!s || s->closed() || s->info().user == nullptr) continue;
      if (auto now_user = users->find(s->info().user->name)) {
        s->info().user = std::move(now_user);
        continue;
      }
      spdlog::info("peer {}: user '{}' is no longer in users_file; closing", s->info().peer,
                   s->info().user->name);
      s->info().user.reset();
      close_with_error(*s, "your user was removed from the server's users_file");
      ++closed;
    }
    spdlog::info("SIGHUP: re-read users_file {}: {} users; {} connections of removed users closed",
                 settings_.users_file, users->size(), closed);
    dispatcher_.set_users(std::move(users));
    after_batch();
  }

  // New TLS connections get the new certificate, key and CA; open ones keep what they have.
  void reload_tls() {
    if (settings_.listen_tls.empty() && settings_.metrics_tls == 0) return;
    auto made = make_tls_context(settings_);
    if (auto* err = std::get_if<std::string>(&made)) {
      spdlog::error("SIGHUP: TLS: {}; keeping the current certificate and key", *err);
      return;
    }
    tls_context_ = std::get<std::shared_ptr<asio::ssl::context>>(std::move(made));
    if (metrics_ && settings_.metrics_tls != 0) metrics_->set_tls(tls_context_);
    spdlog::info(
        "SIGHUP: re-read tls_cert_file {}, tls_key_file {}{}; new TLS connections use "
        "them",
        settings_.tls_cert_file, settings_.tls_key_file,
        settings_.tls_ca_file.empty() ? "" : ", tls_ca_file " + settings_.tls_ca_file);
  }

  // Sessions that have authenticated keep their session; a file that cannot be read keeps the
  // old secret.
  void reload_auth_file() {
    if (settings_.auth_file.empty()) return;
    std::string secret;
    if (auto err = read_auth_file(settings_.auth_file, secret)) {
      spdlog::error("SIGHUP: {}; keeping the current secret", *err);
      return;
    }
    dispatcher_.set_auth_secret(secret);
    spdlog::info("SIGHUP: re-read auth_file {}; new hellos are checked against it",
                 settings_.auth_file);
  }

  void on_signal(const error_code& ec, int signo) {
    if (ec) return;
    if (stopping_) {
      spdlog::warn("signal {} during shutdown: exiting now", signo);
      for (auto& s : draining_) s->abort();
      io_.stop();
      return;
    }
    spdlog::info("signal {}: shutting down ({} connections, {} leases, {} waiters)", signo,
                 sessions_live_, table_.held(now()), table_.waiting());
    stopping_ = true;
    sd_notify(0, "STOPPING=1");
    watchdog_timer_.cancel();
    signals_.async_wait([this](const error_code& e, int n) { on_signal(e, n); });
    error_code ignored;
    acceptor_.close(ignored);
    tls_acceptor_.close(ignored);
    accept_timer_.cancel();
    tls_accept_timer_.cancel();
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
    wait_reload_signal();
    do_accept();
    if (tls_acceptor_.is_open()) do_accept(true);
    do_housekeeping();
    // Listening, state loaded: tell systemd (Type=notify), and keep its watchdog fed.
    sd_notifyf(0, "READY=1\nSTATUS=serving\nMAINPID=%lu", static_cast<unsigned long>(::getpid()));
    start_watchdog();
    io_.run();
#ifdef KEYLOCK_CLUSTER
    if (runtime_) runtime_->stop();  // revokes the etcd lease: our rights go at once
#endif
    spdlog::info("keylockd stopped");
    return 0;
  }

  config settings_;
  asio::io_context io_{1};
  duration_histogram wait_hist_;  // acquire -> grant, recorded by the table
  duration_histogram hold_hist_;  // grant -> end of the lease
  fencing_tokens tokens_;
  forward_port port_;
  std::unique_ptr<coordinator> coordinator_;  // cluster mode only
  lock_table table_;
  tick started_;
  dispatcher dispatcher_;
  tcp::acceptor acceptor_;
  tcp::acceptor tls_acceptor_;                       // open with listen_tls
  std::shared_ptr<asio::ssl::context> tls_context_;  // for new TLS connections (SIGHUP: renewed)
  asio::signal_set signals_;
  asio::signal_set reload_signal_;
  asio::steady_timer deadline_timer_;
  asio::steady_timer housekeeping_timer_;
  asio::steady_timer accept_timer_;
  asio::steady_timer tls_accept_timer_;
  asio::steady_timer reservation_timer_;
  bool reservation_waiting_ = false;  // a failed reservation waits for its retry timer
  asio::steady_timer cluster_timer_;   // the coordinator's idle timers
  asio::steady_timer watchdog_timer_;  // systemd's watchdog (WatchdogSec), when it is on
  std::chrono::microseconds watchdog_every_{0};
  std::optional<tick> cluster_armed_;
  std::string node_name_;
  // Why etcd could not be reached, per etcd_path (lease, watch); empty when it could.
  std::array<std::string, 2> etcd_problems_;
  duration_histogram etcd_rtt_;
  std::optional<tick> armed_;
  std::uint64_t timer_generation_ = 0;
  std::vector<std::shared_ptr<session>> sessions_;  // by owner id
  std::vector<std::shared_ptr<session>> draining_;  // closed, flushing their last reply
  std::size_t sessions_live_ = 0;    // open sessions (not closing)
  std::size_t sockets_open_ = 0;     // sessions whose socket is open, closing ones included
  std::size_t unauthenticated_ = 0;  // open sessions that have not passed hello (auth on)
  std::deque<std::weak_ptr<session>> unauthenticated_order_;  // in accept order
  std::vector<owner_id> dirty_;
  // after_reads: the end of this wake-up's batch is queued; its reads, and the last batch's.
  bool batch_open_ = false;
  std::size_t batch_reads_ = 0;
  std::size_t last_batch_reads_ = 0;
  // defer_read: sessions to read again after this batch, and those being resumed.
  std::vector<std::shared_ptr<session>> reads_deferred_;
  std::vector<std::shared_ptr<session>> reads_resuming_;
  bool resume_posted_ = false;
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
  std::unique_ptr<metrics_http> metrics_;  // closed before the io_context
#ifdef KEYLOCK_CLUSTER
  // Its threads post into io_: destroyed (stopped) before it.
  std::unique_ptr<cluster_runtime> runtime_;
#endif
  // The fencing writer's thread (fsync off the event loop). Last: joined first, while
  // everything its handlers touch still exists.
  asio::thread_pool disk_{1};
};

server::server(config settings) : impl_(std::make_unique<impl>(std::move(settings))) {}
server::~server() = default;
std::optional<std::string> server::open() { return impl_->open(); }
int server::run() { return impl_->run(); }

}  // namespace keylock
