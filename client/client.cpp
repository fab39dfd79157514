// keylock client library: the one translation unit that includes Asio.
//
// client_impl owns the connection and a private I/O thread running an io_context, or, built
// with the user's io_context, runs every handler there instead (no thread of its own; each
// handler then keeps the client alive, as the destructor cannot wait for them). "The I/O
// thread" below means whichever thread runs our handlers. Everything below marked "I/O state"
// is guarded by `io_mtx_`: the I/O thread holds it in every handler (`guarded`), and a
// blocking call takes it to do its own I/O, so that the common call costs no thread hop at all:
// - A blocking call runs its "setup" step in the calling thread, under `io_mtx_`. The request
//   is written to the socket at once (`flush` tries a plain non-blocking send first).
// - If nobody else is reading the socket, the caller becomes the reader (the "leader") for up
//   to `lead_window`: it polls the socket itself and handles every frame it reads, other
//   callers' answers and events included, until its own call is complete. Otherwise it blocks
//   on its `waiter` until the reader (leader or I/O thread) completes it.
// - The I/O thread reads only while no caller does: it watches the socket with async_wait and
//   reads with a plain recv under `io_mtx_`. A watch that fires during a leader's turn parks.
//   A leader that leaves with calls still unanswered re-arms the watch at once; with none, the
//   I/O thread takes the socket back `idle_watch_lag` after the last leader left (events and
//   drops on an idle connection are noticed that much later).
// - User code never runs in a caller's thread or under io_mtx_: on_lost callbacks and the
//   completions of asynchronous operations are deferred (`defer`). A handler of ours runs what
//   it deferred as it ends, after releasing io_mtx_ (`run_guarded`); what a leader defers is
//   posted to the I/O thread.
// `mtx_` guards only `closed_` and `server_version_`.
//
// TLS (tls.hpp) changes none of this: Asio still connects; the handshake is driven by
// async_wait on the I/O thread (state `securing`); then `tls_` stands in for recv and send
// (read_ready_tls, flush_tls), under io_mtx_ like them, so one thread at a time uses the
// session. A TLS reader reads until OpenSSL wants the socket again, and a leader checks
// SSL_pending before it polls: decrypted bytes buffered in OpenSSL do not make the socket
// readable. Without TLS the only cost is a test of `tls_` where recv and send are called.
//
// Time is kept in one ordered deadline index (`deadlines_`, one steady_timer): lease renewals
// (ttl/3), local lease expiry (no renewal confirmed within the ttl), request timeouts, waits of
// queued acquires, connect timeouts and reconnect backoff.
#include "keylock/client.hpp"

#include "core/backoff.hpp"
#include "core/call_table.hpp"
#include "core/deadline_queue.hpp"
#include "core/frame_reader.hpp"
#include "core/lease_book.hpp"
#include "keylock/codec.hpp"
#include "tls.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/defer.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>  // first: Boost 1.74's asio/awaitable.hpp uses std::exchange without it
#include <vector>

namespace keylock {

std::string_view to_string(lost_reason reason) noexcept {
  switch (reason) {
    case lost_reason::expired:
      return "expired";
    case lost_reason::not_held:
      return "not_held";
    case lost_reason::connection_lost:
      return "connection_lost";
    case lost_reason::client_closed:
      return "client_closed";
  }
  return "unknown";
}

namespace detail {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A reply frame larger than this (no newline within it) is a broken stream: drop the
// connection. inspect of a key at the daemon's max_limit (1024 holders) is about 150 KB.
constexpr std::size_t max_reply_bytes = std::size_t{8} << 20;
// A caller reads its own reply for at most this long, then waits for the I/O thread to.
constexpr milliseconds lead_window{50};
// With nothing due, the I/O thread takes the socket back this long after the last leader left.
constexpr milliseconds idle_watch_lag{5};

enum class deadline_kind : std::uint8_t {
  renew,         // ref = lease token: send the next auto renewal
  lease_expiry,  // ref = lease token: no renewal confirmed within the ttl
  call,          // ref = request id: request timeout / acquire wait
  connect,       // ref = connection generation: the attempt took too long
  reconnect,     // ref unused: backoff elapsed, connect again
  outage,        // ref unused: disconnected for connect_timeout: acquires fail from now on
  health,        // ref = connection generation: heartbeat tick
};

struct deadline {
  deadline_kind kind;
  std::uint64_t ref;
};

using deadline_index = deadline_queue<deadline, steady>;
using deadline_handle = deadline_index::handle;

// The exception E(args...) as a pointer for another thread to rethrow. The temporary is
// destroyed inside this call, before the pointer leaves it: libstdc++'s runtime_error shares
// its message through an uninstrumented reference count, and ThreadSanitizer reports the
// temporary's destructor racing the waiter's read when it runs after the handoff.
template <class E, class... Args>
std::exception_ptr error_ptr(Args&&... args) {
  return std::make_exception_ptr(E(std::forward<Args>(args)...));
}

// The error code of an error reply as spelled on the wire (also for codes newer than us).
std::string_view code_of(const reply& rep) {
  return rep.code_name.empty() ? to_string(rep.code) : std::string_view(rep.code_name);
}

// What failed, to pick the exception type for requests that could not even be sent.
enum class failure_kind : std::uint8_t { connection, auth, protocol };

std::exception_ptr make_failure(failure_kind kind, const std::string& message) {
  switch (kind) {
    case failure_kind::auth:
      return error_ptr<AuthError>(message, errc::unauthenticated);
    case failure_kind::protocol:
      return error_ptr<ProtocolError>(message);
    case failure_kind::connection:
      break;
  }
  return error_ptr<ConnectionError>(message);
}

// The typed exception for an error reply. Unknown codes (a newer daemon) are a plain Error.
std::exception_ptr error_from_reply(const reply& rep) {
  const std::string message =
      rep.message.empty() ? "keylockd answered " + std::string(code_of(rep)) : rep.message;
  const std::optional<errc> code =
      rep.code_name.empty() ? std::optional<errc>(rep.code) : errc_from_string(rep.code_name);
  if (!code) return error_ptr<Error>(message);
  switch (*code) {
    case errc::timeout:
      return error_ptr<Timeout>(message, *code);
    case errc::not_held:
      return error_ptr<NotHeld>(message, *code);
    case errc::conflict:
      return error_ptr<Conflict>(message, *code);
    case errc::limit_exceeded:
      return error_ptr<LimitExceeded>(message, *code);
    case errc::unauthenticated:
      return error_ptr<AuthError>(message, *code);
    case errc::denied:
      return error_ptr<Denied>(message, *code);
    case errc::bad_request:
    case errc::unknown_op:
    case errc::frame_too_large:
      return error_ptr<ProtocolError>(message, *code);
    case errc::shutting_down:
      return error_ptr<ConnectionError>(message, *code);
    case errc::cancelled:
    case errc::not_found:
    case errc::unavailable:  // the daemon cannot grant for now: a generic failure, retry later
      break;
  }
  return error_ptr<Error>(message, *code);
}

// Splits "host:port", "host", "[v6]:port" or "[v6]". Throws std::invalid_argument.
std::pair<std::string, std::string> split_server(const std::string& server) {
  std::string host;
  std::string port = std::to_string(default_port);
  auto bad = [&] {
    return std::invalid_argument("keylock: invalid server address '" + server +
                                 "' (expected host:port)");
  };
  if (!server.empty() && server.front() == '[') {
    const auto close = server.find(']');
    if (close == std::string::npos) throw bad();
    host = server.substr(1, close - 1);
    const std::string rest = server.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') throw bad();
      port = rest.substr(1);
    }
  } else if (std::count(server.begin(), server.end(), ':') == 1) {
    const auto colon = server.find(':');
    host = server.substr(0, colon);
    port = server.substr(colon + 1);
  } else {
    host = server;  // no port, or a bare IPv6 address
  }
  if (host.empty() || port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(port) == 0 || std::stoul(port) > 65535) {
    throw bad();
  }
  return {host, port};
}

// One daemon address of the configured list.
struct server_address {
  std::string text;  // as configured (trimmed): names the daemon in messages
  std::string host;
  std::string port;
};

// Splits a comma-separated list of addresses, each as split_server takes it; blanks around an
// element are ignored. Throws std::invalid_argument for an empty list or element, or a malformed
// address.
std::vector<server_address> split_servers(const std::string& list) {
  std::vector<server_address> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    std::string text = list.substr(start, comma - start);
    const auto first = text.find_first_not_of(" \t");
    text = first == std::string::npos
               ? std::string()
               : text.substr(first, text.find_last_not_of(" \t") - first + 1);
    if (text.empty()) {
      throw std::invalid_argument("keylock: invalid server list '" + list +
                                  "' (an empty address; expected host:port,host:port)");
    }
    auto [host, port] = split_server(text);
    out.push_back(server_address{std::move(text), std::move(host), std::move(port)});
    if (comma == list.size()) break;
    start = comma + 1;
  }
  return out;
}

// How messages name the keys of a request or lease: 'k' for one key, {'a', 'b'} for a set.
std::string quote_keys(const std::vector<std::string>& keys) {
  if (keys.size() == 1) return "'" + keys.front() + "'";
  std::string out = "{";
  for (const auto& key : keys) {
    if (out.size() > 1) out += ", ";
    out += "'" + key + "'";
  }
  return out + "}";
}

std::string env_or(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

// Fills what the caller left unset in options.tls from the environment (tls_options says how;
// the Python client reads the same variables the same way).
void tls_from_environment(tls_options& tls) {
  if (tls.ca_file.empty()) tls.ca_file = env_or("KEYLOCK_TLS_CA", "");
  if (tls.cert_file.empty()) tls.cert_file = env_or("KEYLOCK_TLS_CERT", "");
  if (tls.key_file.empty()) tls.key_file = env_or("KEYLOCK_TLS_KEY", "");
  if (tls.server_name.empty()) tls.server_name = env_or("KEYLOCK_TLS_SERVER_NAME", "");
  if (!tls.enabled) tls.enabled = env_or("KEYLOCK_TLS", "") == "1" || !tls.ca_file.empty();
}

}  // namespace

enum class lease_status : std::uint8_t { held, released, lost };

// How an acquire names its keys on the wire: `key` (acquire) or `keys` (acquire_all).
enum class key_shape : std::uint8_t { one_key, key_set };

// One granted lease. keys, token, mode and reentrant never change; `status` and `depth` are
// the only members read without io_mtx_; the rest is I/O state (on_lost is set before the
// lease is shared and never changed, so the deferred call of it needs no lock).
struct lease_state {
  lease_state(std::vector<std::string> ks, std::uint64_t t, lock_mode m, bool r)
      : keys(std::move(ks)), key(keys.front()), token(t), mode(m), reentrant(r) {}

  const std::vector<std::string> keys;  // as acquired; never empty
  const std::string key;                // keys.front(): names the lease in release/extend
  const std::uint64_t token;
  const lock_mode mode;
  const bool reentrant;  // registered in client_impl::reentries_ while held
  std::string label() const { return quote_keys(keys); }  // for messages
  std::atomic<lease_status> status{lease_status::held};
  // Open holds of a reentrant lease; written under client_impl::reentry_mtx_.
  std::atomic<int> depth{1};

  // I/O state: under client_impl::io_mtx_.
  milliseconds ttl{0};
  bool auto_extend = false;
  bool renewing = false;  // an auto renewal is in flight
  std::function<void(const lease_lost&)> on_lost;
  std::string lost_message;
  deadline_handle renew_at;
  deadline_handle expires_at;
};

namespace {

// A blocked caller. Lives on the caller's stack; whoever reads its answer (the I/O thread or
// a leader, under io_mtx_) completes it exactly once and never touches it afterwards.
struct waiter {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  std::optional<reply> rep;  // ping, inspect, stats, top: the answer (built only for those)
  std::shared_ptr<lease_state> lease;
  std::chrono::nanoseconds rtt{0};
  // When an asynchronous operation's request was set up: its answer time feeds the spin
  // decision (client_impl::note_answer). Unset for blocking calls, whose leader measures it.
  std::chrono::steady_clock::time_point asked{};
  // An asynchronous operation's waiter (a heap-allocated operation that derives from waiter,
  // nobody blocked on it): complete() has the I/O thread run this (deferred, without
  // io_mtx_) instead of waking anyone, and it frees the operation.
  void (*on_complete)(waiter&) = nullptr;

  void wait() {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return done; });
  }
};

// The key that names a request's lock in release/extend: `key`, or the first of `keys` (the
// daemon takes any member of a set).
const std::string& first_key(const request& req) {
  return req.has(field::keys) && !req.keys.empty() ? req.keys.front() : req.key;
}

// One request known to the I/O thread, by id. `w` is null for the client's own requests
// (hello, renewals, releases of abandoned grants, cancels) and for an acquire whose caller
// gave up (an abandoned acquire: a late grant is released at once).
struct pending {
  request req;
  waiter* w = nullptr;
  call_state state = call_state::queued;
  steady::time_point sent_at{};
  std::optional<steady::time_point> wait_until;  // acquire with a wait
  milliseconds wait{0};                          // acquire: the wait asked for
  bool past_wait = false;  // acquire: the wait ran out while sent; now bounding the reply
  deadline_handle timeout;
  std::shared_ptr<lease_state> lease;  // release, extend
  // acquire
  // The keys, for messages (built only for one).
  std::string label() const {
    if (req.has(field::keys) && !req.keys.empty()) return quote_keys(req.keys);
    return quote_keys({req.key});
  }
  bool reentrant = false;
  bool auto_extend = false;
  std::function<void(const lease_lost&)> on_lost;

  // What call_table needs to know.
  bool user() const { return w != nullptr; }
  bool is_acquire() const { return req.kind == op::acquire; }
  bool is_release() const { return req.kind == op::release; }
  bool is_extend() const { return req.kind == op::extend; }
};

// The client whose I/O mutex this thread holds inside one of its handlers (run_guarded); null
// elsewhere, and always while user code runs.
thread_local const void* io_locked_by = nullptr;

// An Asio handler that runs `fn` with the client's I/O mutex held (client_impl::guarded and
// run_guarded). Only callable with what `fn` takes, so Asio's overloads that inspect a handler
// still choose right.
template <class Owner, class Fn>
struct guarded_handler {
  Owner* owner;
  std::shared_ptr<void> keep;  // the client, when it runs on the user's io_context
  Fn fn;

  template <class... Args>
  requires std::is_invocable_v<Fn&, Args...>
  void operator()(Args&&... args) { owner->run_guarded(fn, std::forward<Args>(args)...); }
};

enum class conn_state : std::uint8_t {
  disconnected,  // waiting for the reconnect backoff (or closed)
  connecting,    // resolving / TCP connecting
  securing,      // connected, TLS handshake under way (tls_context_ set)
  handshaking,   // connected, `hello` sent, nothing else may go yet
  ready,         // everything may go
  draining,      // the daemon said shutting_down: no acquire goes out until we reconnect
};

}  // namespace

class client_impl : public std::enable_shared_from_this<client_impl> {
 public:
  // `io`: run on the user's io_context instead of a thread of our own.
  client_impl(client_options options, asio::io_context* io)
      : options_(std::move(options)),
        work_(asio::make_work_guard(ioc_)),
        user_io_(io),
        ex_(io != nullptr ? io->get_executor() : ioc_.get_executor()),
        resolver_(ex_),
        socket_(ex_),
        timer_(ex_),
        lag_timer_(ex_),
        wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
        rng_(std::random_device{}()) {
    if (wake_fd_ < 0) throw std::system_error(errno, std::system_category(), "keylock: eventfd");
    if (options_.server.empty()) options_.server = env_or("KEYLOCK_SERVER", "127.0.0.1:7400");
    if (!options_.auth) options_.auth = env_or("KEYLOCK_AUTH", "");
    if (!options_.user) options_.user = env_or("KEYLOCK_USER", "");
    tls_from_environment(options_.tls);
    if (*options_.tls.enabled) {
      tls_context_ = std::make_unique<tls_context>(
          tls_files{options_.tls.ca_file, options_.tls.cert_file, options_.tls.key_file});
    }
    servers_ = split_servers(options_.server);
    for (const auto& address : servers_) server_list_.push_back(address.text);
    round_left_ = servers_.size();
    backoff_ = backoff(options_.backoff_initial, options_.backoff_max);
  }

  ~client_impl() {
    // On the user's io_context the last handler has run (each keeps the client alive), and
    // the Client's destructor has closed it.
    if (user_io_ == nullptr) shutdown();
    ::close(wake_fd_);
  }
  client_impl(const client_impl&) = delete;
  client_impl& operator=(const client_impl&) = delete;

  // Starts the I/O thread and makes the first connection. Throws like Client::Client.
  // On the user's io_context, only starts connecting: the client counts as down from now, so
  // that acquires fail with ConnectionError when no daemon answers within connect_timeout.
  void start() {
    if (user_io_ != nullptr) {
      std::lock_guard io(io_mtx_);
      down_since_ = steady::now();
      outage_at_ = add_deadline(*down_since_ + options_.connect_timeout, deadline_kind::outage, 0);
      asio::post(ex_, guarded([this] {
                   if (!closing_) start_connect();
                 }));
      return;
    }
    thread_ = std::thread([this] { ioc_.run(); });
    io_thread_id_ = thread_.get_id();
    waiter w;
    try {
      submit(w, [&] {
        connect_waiter_ = &w;
        start_connect();
      });
    } catch (...) {
      shutdown();
      throw;
    }
  }

  // Stops everything; idempotent. Blocks until the I/O thread has exited; on the user's
  // io_context, returns at once (close_all runs there).
  void shutdown() noexcept {
    {
      std::lock_guard lock(mtx_);
      if (closed_) return;
      closed_ = true;
      asio::post(ex_, guarded([this] { close_all(); }));
    }
    if (thread_.joinable()) thread_.join();
  }

  // The daemon of the last successful hello (the first of the list before any).
  const std::string& server() const noexcept { return servers_[current_.load()].text; }
  const std::vector<std::string>& servers() const noexcept { return server_list_; }

  std::string server_version() {
    std::lock_guard lock(mtx_);
    return server_version_;
  }

  // Acquires `keys`: as `key` when `shape` is one_key, else as the set `keys`. A reentrant
  // acquire nests in this thread's hold of the same keys when there is one.
  std::shared_ptr<lease_state> acquire(std::vector<std::string> keys, key_shape shape,
                                       const AcquireOptions& options) {
    std::vector<std::string> sorted;
    if (options.reentrant) {
      sorted = keys;
      std::sort(sorted.begin(), sorted.end());
      if (auto held = enter_held(sorted, options.mode)) return held;
    }
    auto lease = acquire_on_wire(std::move(keys), shape, options);
    if (options.reentrant) {
      std::lock_guard lock(reentry_mtx_);
      reentries_[std::this_thread::get_id()].push_back(reentry{std::move(sorted), lease});
    }
    return lease;
  }

  // Ends one hold of `lease`. True when it was the last (or only) one: the caller releases the
  // lease on the daemon. False when an enclosing reentrant holder still holds it.
  bool leave_held(const std::shared_ptr<lease_state>& lease) {
    if (!lease->reentrant) return true;
    std::lock_guard lock(reentry_mtx_);
    if (lease->depth.fetch_sub(1) > 1) return false;
    for (auto it = reentries_.begin(); it != reentries_.end(); ++it) {
      auto& held = it->second;
      const auto found = std::find_if(held.begin(), held.end(), [&](const reentry& held_lease) {
        return held_lease.lease == lease;
      });
      if (found == held.end()) continue;
      held.erase(found);
      if (held.empty()) reentries_.erase(it);
      break;
    }
    return true;
  }

 private:
  // A reentrant acquire: the lease this thread holds over exactly `sorted` (depth + 1), nullptr
  // when no held set shares a key with it. Throws ReentrancyError for a mode or set mismatch,
  // NotHeld when the held lease was lost.
  std::shared_ptr<lease_state> enter_held(const std::vector<std::string>& sorted, lock_mode mode) {
    std::lock_guard lock(reentry_mtx_);
    const auto it = reentries_.find(std::this_thread::get_id());
    if (it == reentries_.end()) return nullptr;
    for (const reentry& held : it->second) {
      if (held.keys == sorted) {
        const auto& lease = held.lease;
        if (lease->mode != mode) {
          throw ReentrancyError("keylock: cannot nest a " + std::string(to_string(mode)) +
                                " hold of " + lease->label() + " inside this thread's " +
                                std::string(to_string(lease->mode)) + " hold of it");
        }
        if (lease->status.load() == lease_status::lost) {
          throw NotHeld("keylock: the enclosing hold of " + lease->label() + " was lost");
        }
        lease->depth.fetch_add(1);
        return lease;
      }
      const bool overlap = std::any_of(sorted.begin(), sorted.end(), [&](const std::string& k) {
        return std::binary_search(held.keys.begin(), held.keys.end(), k);
      });
      if (overlap) {
        throw ReentrancyError("keylock: cannot nest an acquire of " + quote_keys(sorted) +
                              " inside this thread's hold of " + held.lease->label() +
                              ": nested sets of keys must be equal");
      }
    }
    return nullptr;
  }

 public:
  // AcquireOptions::stop of one acquire call; I/O state (under io_mtx_).
  struct cancel_slot {
    std::uint64_t id = 0;  // the call, once setup made it
    bool cancelled = false;
  };

  std::shared_ptr<lease_state> acquire_on_wire(std::vector<std::string> keys, key_shape shape,
                                               const AcquireOptions& options) {
    waiter w;
    // Cancellation from another thread: the stop callback posts to the I/O thread, which
    // cancels the call if setup has made it, or makes setup fail at once if it has not.
    auto slot = std::make_shared<cancel_slot>();
    std::optional<std::stop_callback<std::function<void()>>> on_stop;
    if (options.stop.stop_possible()) on_stop.emplace(options.stop, stop_handler(slot));
    submit(w, [&] { setup_acquire(w, *slot, keys, shape, options); });
    return std::move(w.lease);
  }

  // The acquire behind async_acquire: returns at once; `done` runs once, on the I/O thread,
  // with the granted lease or the exception acquire() would have thrown.
  void start_acquire(std::vector<std::string> keys, key_shape shape, AcquireOptions options,
                     std::function<void(std::exception_ptr, Lease)> done) {
    if (options.reentrant) {
      done(error_ptr<std::invalid_argument>(
               "keylock: async_acquire does not take AcquireOptions::reentrant (a hold "
               "belongs to a thread, an asynchronous operation to none)"),
           Lease());
      return;
    }
    // One allocation for the whole operation. `self` keeps it until it completes; the stop
    // callback's handler may hold its slot a while longer.
    struct async_op : waiter {
      std::shared_ptr<async_op> self;
      cancel_slot slot;
      std::optional<std::stop_callback<std::function<void()>>> on_stop;
      std::function<void(std::exception_ptr, Lease)> done;
      std::weak_ptr<client_impl> client;
    };
    auto op = std::make_shared<async_op>();
    op->self = op;
    op->done = std::move(done);
    op->client = weak_from_this();
    op->on_complete = [](waiter& finished) {
      auto& self = static_cast<async_op&>(finished);
      const std::shared_ptr<async_op> keep = std::move(self.self);
      self.on_stop.reset();
      const auto then = std::move(self.done);
      std::shared_ptr<client_impl> client = self.client.lock();
      if (self.error || !self.lease || !client) {
        then(self.error ? self.error : error_ptr<ConnectionError>("keylock: the client is closed"),
             Lease());
        return;
      }
      then(nullptr, Lease(std::move(client), std::move(self.lease)));
    };
    auto slot = std::shared_ptr<cancel_slot>(op, &op->slot);
    waiter* w = op.get();
    if (options.stop.stop_possible()) op->on_stop.emplace(options.stop, stop_handler(slot));
    if (is_closed()) {
      finish_here(*w, error_ptr<ConnectionError>("keylock: the client is closed"));
      return;
    }
    run_setup(
        [this, w, slot, keys = std::move(keys), shape, options = std::move(options)]() mutable {
          if (closing_) {
            complete(*w, error_ptr<ConnectionError>("keylock: the client is closed"));
            return;
          }
          w->asked = steady::now();
          setup_acquire(*w, *slot, keys, shape, options);
          spin_for_answer();
        });
  }

 private:
  std::function<void()> stop_handler(const std::shared_ptr<cancel_slot>& slot) {
    return [this, slot] { asio::post(ex_, guarded([this, slot] { cancel_acquire(*slot); })); };
  }

  // I/O thread: makes the acquire call that completes `w`, and sends or queues it.
  void setup_acquire(waiter& w, cancel_slot& slot, std::vector<std::string>& keys,
                     key_shape shape, const AcquireOptions& options) {
    if (slot.cancelled || options.stop.stop_requested()) {
      complete(w, cancelled_error(quote_keys(keys)));
      return;
    }
    if (outage_) {
      complete(w, outage_error(quote_keys(keys)));
      return;
    }
    auto [id, p] = calls_.add();
    slot.id = id;
    p.w = &w;
    p.req.kind = op::acquire;
    p.req.id = id;
    if (shape == key_shape::one_key) {
      p.req.key = std::move(keys.front());
      p.req.set(field::key);
    } else {
      p.req.keys = std::move(keys);
      p.req.set(field::keys);
    }
    if (options.mode != lock_mode::exclusive) {  // the default is not sent: older daemons
      p.req.mode = options.mode;
      p.req.set(field::mode);
    }
    p.req.ttl_ms = static_cast<std::uint64_t>(options.ttl.count());
    p.req.limit = options.limit;
    p.req.set(field::id);
    p.req.set(field::ttl_ms);
    p.req.set(field::limit);
    if (options.wait) {
      p.wait = std::max(*options.wait, milliseconds(0));
      p.wait_until = steady::now() + p.wait;
      p.timeout = add_deadline(*p.wait_until, deadline_kind::call, id);
    }
    p.reentrant = options.reentrant;
    p.auto_extend = options.auto_extend;
    p.on_lost = options.on_lost;
    send_or_queue(id);
  }

 public:
  static std::exception_ptr cancelled_error(const std::string& label) {
    return error_ptr<Cancelled>("keylock: acquire of " + label +
                                " cancelled (AcquireOptions::stop)");
  }

  // I/O thread: the stop of an acquire was requested.
  void cancel_acquire(cancel_slot& slot) {
    slot.cancelled = true;
    pending* found = slot.id == 0 ? nullptr : calls_.find(slot.id);
    if (found == nullptr || found->w == nullptr) return;
    pending& p = *found;
    waiter& w = *p.w;
    if (p.state == call_state::queued) {  // never sent: nothing to withdraw
      pending done = std::move(*calls_.take(slot.id));
      cancel_deadline(done.timeout);
      complete(w, cancelled_error(done.label()));
      return;
    }
    // On the daemon: withdraw it. The call stays to take the answer; with no waiter, a grant
    // that crossed the cancel is released at once (on_acquire_reply).
    p.w = nullptr;
    cancel_deadline(p.timeout);
    const std::string label = p.label();
    const std::uint64_t target = slot.id;
    const std::uint64_t cancel_id = new_internal_call(op::cancel);  // may rehash calls_
    pending& cancel = calls_.at(cancel_id);
    cancel.req.target = target;
    cancel.req.set(field::target);
    send_or_queue(cancel_id);
    complete(w, cancelled_error(label));
  }

  void release(const std::shared_ptr<lease_state>& lease, release_mode mode) {
    if (!leave_held(lease)) {
      // An enclosing holder keeps the lease; tell this one if it ran without the lock.
      if (lease->status.load() == lease_status::lost && !on_io_thread()) {
        // lost_message is written before status turns lost, and never again.
        throw NotHeld("keylock: lease on " + lease->label() + " was lost: " + lease->lost_message);
      }
      return;
    }
    if (on_io_thread()) {  // from a callback, or a Lease dropped by the client's own code
      if (io_locked_by == this) {
        release_inline(lease);
      } else {
        std::lock_guard io(io_mtx_);
        release_inline(lease);
      }
      return;
    }
    waiter w;
    submit(w, [&] { setup_release(w, lease, mode); });
  }

  // release() without blocking: `done` gets what release() would have thrown, or null.
  void start_release(const std::shared_ptr<lease_state>& lease, release_mode mode,
                     std::function<void(std::exception_ptr)> done) {
    if (!leave_held(lease)) {
      done(lease->status.load() == lease_status::lost
               ? error_ptr<NotHeld>("keylock: lease on " + lease->label() +
                                    " was lost: " + lease->lost_message)
               : nullptr);
      return;
    }
    start(std::move(done), [this, lease, mode](waiter& w) { setup_release(w, lease, mode); });
  }

  void start_extend(const std::shared_ptr<lease_state>& lease, milliseconds ttl,
                    std::function<void(std::exception_ptr)> done) {
    start(std::move(done), [this, lease, ttl](waiter& w) { setup_extend(w, lease, ttl); });
  }

  // I/O thread: the release call that completes `w` (or `w` completed at once).
  void setup_release(waiter& w, const std::shared_ptr<lease_state>& lease, release_mode mode) {
    if (lease->status.load() != lease_status::held) {
      finish_lost_or_released(w, *lease);
      return;
    }
    forget(lease, lease_status::released);
    if (mode == release_mode::no_reply) {
      send_release(lease->key, lease->token);
      complete(w);  // queued on the connection, ahead of anything submitted after
      return;
    }
    pending& p = new_user_call(w, op::release);
    p.req.key = lease->key;
    p.req.token = lease->token;
    p.req.set(field::key);
    p.req.set(field::token);
    p.lease = lease;
    send_or_queue(p.req.id);
  }

  void release_quietly(const std::shared_ptr<lease_state>& lease) noexcept {
    try {
      release(lease, release_mode::no_reply);
    } catch (...) {  // the destructor's contract: errors are swallowed
    }
  }

  void extend(const std::shared_ptr<lease_state>& lease, milliseconds ttl) {
    waiter w;
    submit(w, [&] { setup_extend(w, lease, ttl); });
  }

  // I/O thread: the extend call that completes `w` (or `w` completed at once).
  void setup_extend(waiter& w, const std::shared_ptr<lease_state>& lease, milliseconds ttl) {
    if (lease->status.load() != lease_status::held) {
      finish_lost_or_released(w, *lease);
      return;
    }
    pending& p = new_user_call(w, op::extend);
    p.req.key = lease->key;
    p.req.token = lease->token;
    p.req.ttl_ms = static_cast<std::uint64_t>(ttl.count());
    p.req.set(field::key);
    p.req.set(field::token);
    p.req.set(field::ttl_ms);
    p.lease = lease;
    send_or_queue(p.req.id);
  }

  std::chrono::nanoseconds ping() {
    waiter w;
    submit(w, [&] { send_or_queue(new_user_call(w, op::ping).req.id); });
    return w.rtt;
  }

  reply inspect(std::string_view key) {
    waiter w;
    submit(w, [&] {
      pending& p = new_user_call(w, op::inspect);
      p.req.key = std::string(key);
      p.req.set(field::key);
      send_or_queue(p.req.id);
    });
    return std::move(w.rep).value();
  }

  void release_token(std::string_view key, std::uint64_t token) {
    waiter w;
    submit(w, [&] {
      pending& p = new_user_call(w, op::release);
      p.req.key = std::string(key);
      p.req.token = token;
      p.req.set(field::key);
      p.req.set(field::token);
      send_or_queue(p.req.id);
    });
  }

  reply stats() {
    waiter w;
    submit(w, [&] { send_or_queue(new_user_call(w, op::stats).req.id); });
    return std::move(w.rep).value();
  }

  reply top(std::uint64_t n) {
    waiter w;
    submit(w, [&] {
      pending& p = new_user_call(w, op::top);
      p.req.n = n;
      p.req.set(field::n);
      send_or_queue(p.req.id);
    });
    return std::move(w.rep).value();
  }

 private:
  // Whether this thread runs the client's handlers: its I/O thread, or a thread running the
  // user's io_context.
  bool on_io_thread() const {
    if (user_io_ != nullptr) return user_io_->get_executor().running_in_this_thread();
    return std::this_thread::get_id() == io_thread_id_;
  }

  // Runs `setup` in this thread under io_mtx_ and blocks until `w` is completed, reading the
  // socket itself while nobody else does (see the top of the file); rethrows w's error.
  template <class Setup>
  void submit(waiter& w, Setup&& setup) {
    if (on_io_thread()) {
      throw std::logic_error(
          "keylock: blocking Client/Lease call from the client's I/O thread (an on_lost "
          "callback must not block)");
    }
    {
      std::unique_lock io(io_mtx_);
      if (closing_) throw ConnectionError("keylock: the client is closed");
      // Claimed before setup: the request it writes then needs no watch by the I/O thread.
      const bool lead = !leading_ && open();
      if (lead) {
        leading_ = true;
        lead_waiter_ = &w;
        lead_thread_ = std::this_thread::get_id();
      }
      if (!lead) {
        setup();
      } else {
        try {
          setup();
        } catch (...) {  // a leader that never leads would leave the socket unread
          leading_ = false;
          lead_waiter_ = nullptr;
          if (awaiting_frames()) watch();
          throw;
        }
        this->lead(w, io);
      }
    }
    w.wait();
    if (w.error) std::rethrow_exception(w.error);
  }

  // The leader's turn (io held on entry and on return): polls the socket and handles what it
  // reads until `w` is complete, the connection ends, or lead_window has passed.
  void lead(waiter& w, std::unique_lock<std::mutex>& io) {
    const auto start = steady::now();
    const auto until = start + lead_window;
    // Spin only while recent answers came within options_.spin: a daemon across a network, or
    // a lock that is held, answers later, and spinning would only burn CPU.
    const auto spin_until = recent_answer_ <= options_.spin ? start + options_.spin : start;
    if (!w.done) unwatch();
    while (!w.done && open()) {
      const auto left = std::chrono::ceil<milliseconds>(until - steady::now());
      if (left <= milliseconds(0)) break;
      const std::uint64_t gen = gen_;
      // Decrypted bytes already inside OpenSSL do not make the socket readable.
      if (tls_ != nullptr && tls_->buffered()) {
        if (!read_ready()) break;
        continue;
      }
      std::array<pollfd, 2> fds{{{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}}};
      io.unlock();
      // Spin first: a reply within options_.spin is read without this thread going to sleep
      // and being woken again, which costs more than the poll calls on a VM.
      int ready = 0;
      while ((ready = ::poll(fds.data(), fds.size(), 0)) == 0 && steady::now() < spin_until) {
        ::sched_yield();  // a daemon on this core runs now instead of after the spin
      }
      if (ready == 0) ready = ::poll(fds.data(), fds.size(), static_cast<int>(left.count()));
      io.lock();
      if (fds[1].revents != 0) {
        std::uint64_t count = 0;
        [[maybe_unused]] const auto drained = ::read(wake_fd_, &count, sizeof count);
      }
      if (gen != gen_) break;
      if (ready > 0 && fds[0].revents != 0 && !read_ready()) break;
    }
    leading_ = false;
    lead_waiter_ = nullptr;
    lead_ended_ = steady::now();
    // A turn that ended unanswered (a held lock, after lead_window) counts at its length.
    note_answer(lead_ended_ - start);
    if (!connected() || watching_) return;
    if (awaiting_frames()) {
      watch();  // someone else's answer is due: the I/O thread reads it
    } else {
      arm_lag();
    }
  }

  // One answer's wait, into the moving average that decides whether to spin (capped at
  // lead_window, the longest a leader's turn lasts, so that one long wait does not stop the
  // spinning for long).
  void note_answer(steady::duration took) {
    recent_answer_ = (7 * recent_answer_ + std::min<steady::duration>(took, lead_window)) / 8;
  }

  // The asynchronous operations' counterpart of a leader's spin: after an asynchronous
  // request is sent, while recent answers came within options_.spin, the thread that runs our
  // handlers (the I/O thread, or the user's io_context) does not sleep in epoll_wait for up to
  // options_.spin. A handler that yields, reads the socket, and queues itself again keeps the
  // io_context busy, so the reactor polls (epoll_wait without a timeout) between the turns:
  // the user's other handlers and I/O keep running, and the answer is read the moment it comes
  // instead of after a sleep and a wake-up. Not while a leader reads the socket.
  void spin_for_answer() {
    if (options_.spin <= std::chrono::microseconds::zero() || recent_answer_ > options_.spin) {
      return;
    }
    spin_until_ = steady::now() + options_.spin;
    if (spinning_) return;
    spinning_ = true;
    asio::defer(ex_, [this, keep = keep_alive()] { spin_step(); });
  }

  bool spin_goes_on() const {
    return awaiting_frames() && !leading_ && open() && !closing_ && steady::now() < spin_until_;
  }

  // One turn of that spin: a yield without io_mtx_ (it holds up no caller), then a read of
  // the socket as a handler of ours, whose completions run as it ends.
  void spin_step() {
    ::sched_yield();  // a daemon on this core runs now
    guarded([this] {
      if (spin_goes_on() && read_ready() && spin_goes_on()) {
        asio::defer(ex_, [this, keep = keep_alive()] { spin_step(); });
      } else {
        spinning_ = false;
      }
    })();
  }

  // Wakes a leader blocked in poll (its call completed elsewhere, or its socket is closing).
  void wake_leader() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof one);
  }

  // submit() without blocking: `setup(w)` runs under io_mtx_ with a heap waiter, whose
  // completion calls `done` on the I/O thread with its error (null on success) and deletes it.
  template <class Setup>
  void start(std::function<void(std::exception_ptr)> done, Setup setup) {
    struct async_op : waiter {
      std::function<void(std::exception_ptr)> done;
    };
    auto* op = new async_op;
    op->done = std::move(done);
    op->on_complete = [](waiter& finished) {
      auto* self = static_cast<async_op*>(&finished);
      const std::exception_ptr error = self->error;
      const auto then = std::move(self->done);
      delete self;
      then(error);
    };
    waiter* w = op;
    if (is_closed()) {
      finish_here(*w, error_ptr<ConnectionError>("keylock: the client is closed"));
      return;
    }
    run_setup([this, w, setup = std::move(setup)]() mutable {
      if (closing_) {
        complete(*w, error_ptr<ConnectionError>("keylock: the client is closed"));
      } else {
        w->asked = steady::now();
        setup(*w);
        spin_for_answer();
      }
    });
  }

  bool is_closed() {
    std::lock_guard lock(mtx_);
    return closed_;
  }

  // Runs an asynchronous operation's setup under io_mtx_: in this thread, so that its request
  // goes out with no hop; posted when this thread is inside a handler of ours (holding
  // io_mtx_, perhaps iterating what setup changes). User code never runs there: a callback,
  // or a handler of the user's on the user's io_context, sets up in place.
  template <class Fn>
  void run_setup(Fn fn) {
    if (io_locked_by == this) {
      asio::post(ex_, guarded(std::move(fn)));
      return;
    }
    std::lock_guard io(io_mtx_);
    fn();
  }

  // ---- I/O state from here on: io_mtx_ held (an I/O thread handler, or a caller) ----------

  // `fn` as an Asio handler that runs with io_mtx_ held: every handler of the I/O thread.
  // On the user's io_context each handler also keeps the client alive: the Client's
  // destructor cannot wait for them there.
  template <class Fn>
  guarded_handler<client_impl, Fn> guarded(Fn fn) {
    return guarded_handler<client_impl, Fn>{this, keep_alive(), std::move(fn)};
  }

 public:
  // The body of every handler of ours: `fn` under io_mtx_, then, without it, the user code
  // that `fn` deferred (on_lost, asynchronous completions), in this same turn of the thread.
  template <class Fn, class... Args>
  void run_guarded(Fn& fn, Args&&... args) {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard io(io_mtx_);
      struct mark {  // io_locked_by = this, for the duration
        const void* outer = io_locked_by;
        explicit mark(const void* self) { io_locked_by = self; }
        ~mark() { io_locked_by = outer; }
        mark(const mark&) = delete;
        mark& operator=(const mark&) = delete;
      } held(this);
      try {
        fn(std::forward<Args>(args)...);
      } catch (...) {  // what it deferred must still run
        if (!deferred_.empty() && !deferring_) post_run_deferred();
        throw;
      }
      // This thread's turn to run callbacks, taken here to spare run_deferred a lock.
      if (deferred_.empty() || deferring_) return;
      deferring_ = true;
      batch.swap(deferred_);
    }
    run_deferred_turn(std::move(batch));
  }

 private:
  std::shared_ptr<void> keep_alive() {
    if (user_io_ == nullptr) return nullptr;  // our thread is joined before we go
    return shared_from_this();
  }

  // Runs user code (on_lost, asynchronous completions) on the I/O thread, after the current
  // handler and without io_mtx_: a callback that takes a lock of its own must not wait on a
  // thread that holds that lock and is itself waiting for io_mtx_ in a blocking call. In the
  // order deferred, one at a time even when several threads run the user's io_context. A
  // handler of ours runs them as it ends (run_guarded); what a caller's thread defers (a
  // leader's read, a setup) is posted; the last handler of close_all runs what is left.
  void defer(std::function<void()> fn) {
    deferred_.push_back(std::move(fn));
    if (io_locked_by == this) return;
    if (deferred_.size() == 1 && !deferring_) post_run_deferred();
  }

  void post_run_deferred() {
    asio::post(ex_, [this, keep = keep_alive()] { run_deferred(); });
  }

  // I/O thread, io_mtx_ not held. Returns at once while another thread runs the callbacks:
  // that one runs these too, after its own.
  void run_deferred() {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard io(io_mtx_);
      if (deferring_) return;
      deferring_ = true;
      batch.swap(deferred_);
    }
    run_deferred_turn(std::move(batch));
  }

  // Runs `batch`, then what is deferred meanwhile, until nothing is: this thread's turn
  // (deferring_ is set; the turn ends it).
  // NOLINTNEXTLINE(performance-unnecessary-value-param): the batch is ours to run and free
  void run_deferred_turn(std::vector<std::function<void()>> batch) {
    struct turn {  // ends this thread's turn however the loop ends (a throwing callback)
      client_impl& self;
      explicit turn(client_impl& owner) : self(owner) {}
      ~turn() {
        std::lock_guard io(self.io_mtx_);
        self.deferring_ = false;
        if (!self.deferred_.empty()) self.post_run_deferred();
      }
      turn(const turn&) = delete;
      turn& operator=(const turn&) = delete;
    } end(*this);
    while (!batch.empty()) {
      for (auto& fn : batch) fn();
      batch.clear();
      std::lock_guard io(io_mtx_);
      batch.swap(deferred_);
    }
  }

  // Completes `w` exactly once: wakes its blocked caller, or runs an asynchronous operation's
  // completion on the I/O thread.
  void complete(waiter& w, std::exception_ptr error = nullptr) {
    if (w.on_complete != nullptr) {
      if (w.asked != steady::time_point{}) note_answer(steady::now() - w.asked);
      w.error = std::move(error);
      w.done = true;
      defer([&w] { w.on_complete(w); });  // frees w
      return;
    }
    const bool leader_elsewhere = &w == lead_waiter_ && std::this_thread::get_id() != lead_thread_;
    {
      std::lock_guard lock(w.m);
      w.error = std::move(error);
      w.done = true;
      // Notify under the lock: once it is released the caller may return and destroy `w`.
      w.cv.notify_one();
    }
    if (leader_elsewhere) wake_leader();
  }

  // An asynchronous operation refused before it reached the I/O thread (the client is closed).
  static void finish_here(waiter& w, std::exception_ptr error) {
    w.error = std::move(error);
    w.done = true;
    w.on_complete(w);  // frees w
  }

  void finish_lost_or_released(waiter& w, const lease_state& lease) {
    if (lease.status.load() == lease_status::lost) {
      complete(w, error_ptr<NotHeld>("keylock: lease on " + lease.label() +
                                     " was lost: " + lease.lost_message));
    } else {
      complete(w,
               error_ptr<NotHeld>("keylock: lease on " + lease.label() + " was already released"));
    }
  }

  pending& new_user_call(waiter& w, op kind) {
    auto [id, p] = calls_.add();
    p.w = &w;
    p.req.kind = kind;
    p.req.id = id;
    p.req.set(field::id);
    p.timeout = add_deadline(steady::now() + options_.request_timeout, deadline_kind::call, id);
    return p;
  }

  std::uint64_t new_internal_call(op kind) {
    auto [id, p] = calls_.add();
    p.req.kind = kind;
    p.req.id = id;
    p.req.set(field::id);
    return id;
  }

  bool can_send(const pending& p) const {
    if (state_ == conn_state::ready) return true;
    if (state_ == conn_state::draining) return p.req.kind != op::acquire;
    return state_ == conn_state::handshaking && p.req.kind == op::hello;
  }

  void send_or_queue(std::uint64_t id) {
    pending& p = calls_.at(id);
    if (can_send(p)) {
      write(p);
    } else {
      calls_.queue(id);
    }
  }

  // Sends every queued call that may go now, in submission order.
  void pump() {
    calls_.pump([this](const pending& p) { return can_send(p); },
                [this](std::uint64_t, pending& p) { write(p); });
  }

  void write(pending& p) {
    const auto now = steady::now();
    if (p.wait_until) {
      // A re-sent acquire waits only for what is left of its wait.
      const auto left = std::chrono::ceil<milliseconds>(*p.wait_until - now);
      p.req.wait_ms = static_cast<std::uint64_t>(std::max(left, milliseconds(0)).count());
      p.req.set(field::wait_ms);
    }
    append_request(out_, p.req);
    p.state = call_state::sent;
    p.sent_at = now;
    flush();
    if (!leading_) watch();  // an answer is due; a leader reads it itself
  }

  // Writes everything queued since the last write: straight to the socket when it takes it
  // all (no completion to run, no wake of the I/O thread), the rest with one async_write.
  void flush() {
    if (writing_ || out_.empty() || !connected()) return;
    if (tls_ != nullptr) {
      flush_tls();
      return;
    }
    const ssize_t sent = ::send(fd_, out_.data(), out_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent == static_cast<ssize_t>(out_.size())) {
      out_.clear();
      return;
    }
    if (sent > 0) out_.erase(0, static_cast<std::size_t>(sent));
    // Full socket buffer, or an error that the async_write reports on the I/O thread.
    if (!registered("cannot write")) return;
    writing_ = true;
    wbuf_.swap(out_);
    out_.clear();
    asio::async_write(socket_, asio::buffer(wbuf_),
                      guarded([this, gen = gen_](boost::system::error_code ec, std::size_t) {
                        on_write(ec, gen);
                      }));
  }

  // flush() over TLS: SSL_write until everything went or the socket is full; then the rest
  // goes from wbuf_ once the socket is ready (on_tls_ready). OpenSSL wants the retried write to
  // start with the same bytes: wbuf_ starts with them (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
  void flush_tls() {
    const tls_result result = write_tls(out_);
    if (out_.empty() || result.status == tls_status::failed) return;
    if (!registered("cannot write")) return;
    writing_ = true;
    wbuf_.swap(out_);
    out_.clear();
    wait_tls_ready(result.status);
  }

  // Sends what `buf` holds, erasing what went, until it is empty or the socket would block.
  // A failure drops the connection (later: the caller may be iterating what on_drop settles).
  tls_result write_tls(std::string& buf) {
    std::size_t sent = 0;
    tls_result result{tls_status::done};
    while (sent < buf.size()) {
      result = tls_->write(buf.data() + sent, buf.size() - sent);
      if (result.status != tls_status::done) break;
      sent += result.bytes;
    }
    if (result.status == tls_status::failed || result.status == tls_status::closed) {
      buf.clear();
      drop_later("write failed: TLS: " + tls_->error());
      return {tls_status::failed};
    }
    buf.erase(0, sent);
    return result;
  }

  // The socket readiness a TLS write waits for (want_read: a TLS-level read must come first).
  void wait_tls_ready(tls_status want) {
    socket_.async_wait(
        want == tls_status::want_read ? tcp::socket::wait_read : tcp::socket::wait_write,
        guarded([this, gen = gen_](boost::system::error_code ec) { on_tls_ready(ec, gen); }));
  }

  void on_tls_ready(boost::system::error_code ec, std::uint64_t gen) {
    if (gen != gen_ || ec) {
      on_write(ec, gen);
      return;
    }
    const tls_result result = write_tls(wbuf_);
    if (result.status == tls_status::failed) {
      writing_ = false;  // the drop is posted; the failure is reported there
      return;
    }
    if (!wbuf_.empty()) {
      wait_tls_ready(result.status);
      return;
    }
    on_write(ec, gen);  // done: what was queued meanwhile goes next
  }

  void on_write(boost::system::error_code ec, std::uint64_t gen) {
    // wbuf_ is ours again only now, even for a write of an older connection.
    writing_ = false;
    wbuf_.clear();
    if (gen != gen_) {
      flush();
      return;
    }
    if (ec) {
      on_drop("write failed: " + ec.message());
      return;
    }
    flush();
  }

  bool connected() const {
    return state_ == conn_state::handshaking || state_ == conn_state::ready ||
           state_ == conn_state::draining;
  }

  // The socket is open, and a leader may poll it.
  bool open() const { return state_ == conn_state::ready || state_ == conn_state::draining; }

  // Whether a frame is due on the connection: an answer to a call on the wire.
  bool awaiting_frames() const {
    return calls_.any_of([](const pending& p) { return p.state == call_state::sent; });
  }

  // The I/O thread watches the socket for something to read, unless a leader reads it.
  void watch() {
    if (watching_ || leading_ || !connected() || !registered("cannot watch the socket")) return;
    watching_ = true;
    socket_.async_wait(tcp::socket::wait_read,
                       guarded([this, seq = ++watch_seq_](boost::system::error_code ec) {
                         on_readable(ec, seq);
                       }));
  }

  // Gives the socket back to socket_ (the reactor) after a leader took it out (unwatch). False,
  // and the connection dropped soon after, when that fails.
  bool registered(std::string_view doing) {
    if (socket_.is_open()) return true;
    boost::system::error_code ec;
    socket_.assign(protocol_, fd_, ec);
    if (!ec) return true;
    drop_later(std::string(doing) + ": " + ec.message());
    return false;
  }

  // on_drop from a handler of its own: the caller may be iterating the calls on_drop settles.
  void drop_later(std::string why) {
    asio::post(ex_, guarded([this, gen = gen_, why = std::move(why)] {
                 if (gen == gen_) on_drop(why);
               }));
  }

  // A leader takes the socket out of the I/O thread's epoll set, which would otherwise wake
  // that thread for every frame the leader reads. Kept while an async_write is out (rare: a
  // full socket buffer); the I/O thread then only wakes and parks.
  void unwatch() {
    if (!socket_.is_open() || writing_) return;
    watching_ = false;
    ++watch_seq_;  // the watch's aborted handler is stale
    boost::system::error_code ignored;
    socket_.release(ignored);  // fd_ stays open, ours
  }

  void on_readable(boost::system::error_code ec, std::uint64_t seq) {
    if (seq != watch_seq_) return;  // taken by a leader, or of a closed connection
    watching_ = false;
    if (ec) {
      on_drop("read failed: " + ec.message());
      return;
    }
    if (leading_) return;  // parked: the leader reads, and re-arms the watch when it leaves
    if (!read_ready()) return;
    if (deferred_.empty()) {
      watch();
      return;
    }
    // Completions run as this handler ends. The watch is re-armed after them: the next call
    // they send arms it anyway (write), after its request is out, so the re-arm's syscall is
    // not spent between an answer and its completion.
    asio::defer(ex_, guarded([this] { watch(); }));
  }

  // Reads what the socket holds and handles every whole frame in it. False when that ended
  // the connection.
  bool read_ready() {
    if (tls_ != nullptr) return read_ready_tls();
    for (;;) {
      const ssize_t n = ::recv(fd_, rchunk_.data(), rchunk_.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
        on_drop("read failed: " + std::system_category().message(errno));
        return false;
      }
      if (n == 0) {
        on_drop("closed by the daemon");
        return false;
      }
      if (!take(static_cast<std::size_t>(n))) return false;
      // A short read emptied the socket; anything newer wakes the watch or the leader's poll.
      if (static_cast<std::size_t>(n) < rchunk_.size()) return true;
    }
  }

  // read_ready() over TLS: reads until OpenSSL needs the socket again, so that no decrypted
  // byte is left in its buffer where neither poll nor the watch would see it. (A short read
  // says nothing here: it may be the end of one record with the next one waiting.)
  bool read_ready_tls() {
    for (;;) {
      const tls_result result = tls_->read(rchunk_.data(), rchunk_.size());
      switch (result.status) {
        case tls_status::done:
          if (!take(result.bytes)) return false;
          continue;
        case tls_status::want_read:
        // want_write: the session must send before it can read (a key update) and the socket is
        // full; the reply to whatever filled it wakes us, as that write's wait does.
        case tls_status::want_write:
          return true;
        case tls_status::closed:
          on_drop("closed by the daemon");
          return false;
        case tls_status::failed:
          on_drop("read failed: TLS: " + tls_->error());
          return false;
      }
    }
  }

  // Handles `n` bytes just read into rchunk_. False when a frame ended the connection.
  bool take(std::size_t n) {
    const std::uint64_t gen = gen_;
    reader_.append(rchunk_.data(), n);
    heard_ = true;
    ping_out_ = false;
    while (const auto frame = reader_.next()) {
      reply rep;
      if (auto error = decode_reply(*frame, rep)) {
        on_drop("undecodable frame from the daemon: " + error->message, failure_kind::protocol);
        return false;
      }
      on_frame(rep);
      if (gen != gen_) return false;  // the frame ended the connection
    }
    if (reader_.overflowed()) {
      on_drop("reply frame longer than " + std::to_string(max_reply_bytes) + " bytes",
              failure_kind::protocol);
      return false;
    }
    return true;
  }

  void on_frame(const reply& rep) {
    if (rep.type == reply::kind::event) {
      if (rep.event == "expired" && rep.token) {
        if (auto lease = leases_.find(*rep.token)) {
          lose(std::move(lease), lost_reason::expired,
               "the daemon expired the lease (ttl ran out)");
        }
      }
      return;  // unknown events are ignored (PROTOCOL.md)
    }
    if (!rep.id) {
      // An error about a frame the daemon could not read, or "too many connections": the
      // daemon closes next; remember why for the messages of what fails then.
      if (rep.type == reply::kind::error) {
        last_error_ = "keylockd: " + rep.message;
        if (state_ == conn_state::handshaking) {
          connect_failed(
              code_of(rep) == "unauthenticated" ? failure_kind::auth : failure_kind::connection,
              last_error_);
        }
      }
      return;
    }
    std::optional<pending> answered = calls_.take(*rep.id);
    if (!answered) return;  // reply to a call that already timed out
    pending& p = *answered;
    cancel_deadline(p.timeout);
    switch (p.req.kind) {
      case op::hello:
        on_hello(rep);
        return;
      case op::acquire:
        on_acquire_reply(std::move(p), rep);
        return;
      case op::extend:
        on_extend_reply(p, rep);
        return;
      case op::release:
        if (p.w == nullptr) return;
        if (rep.type == reply::kind::ok) {
          complete(*p.w);
        } else if (p.lease == nullptr) {  // Client::release: no lease of ours
          complete(*p.w, error_from_reply(rep));
        } else if (code_of(rep) == "not_held") {
          complete(*p.w, error_ptr<NotHeld>(
                             "keylock: lease on " + p.lease->label() +
                                 " was no longer held by the daemon (it expired): " + rep.message,
                             errc::not_held));
        } else {
          complete(*p.w, error_from_reply(rep));
        }
        return;
      default:
        if (p.w == nullptr) return;
        if (rep.type == reply::kind::ok) {
          {
            std::lock_guard lock(p.w->m);
            p.w->rep = rep;
            p.w->rtt = steady::now() - p.sent_at;
          }
          complete(*p.w);
        } else {
          complete(*p.w, error_from_reply(rep));
        }
        return;
    }
  }

  void on_hello(const reply& rep) {
    if (rep.type != reply::kind::ok) {
      const bool auth = code_of(rep) == "unauthenticated";
      connect_failed(auth ? failure_kind::auth : failure_kind::protocol,
                     std::string(auth ? "keylock: authentication refused by keylockd at "
                                      : "keylock: hello refused by keylockd at ") +
                         address() + ": " + rep.message);
      return;
    }
    {
      std::lock_guard lock(mtx_);
      server_version_ = rep.version;
    }
    state_ = conn_state::ready;
    current_.store(attempt_);
    backoff_.reset();
    cancel_deadline(connect_timeout_);
    cancel_deadline(outage_at_);
    down_since_.reset();
    outage_ = false;
    heard_ = true;
    ping_out_ = false;
    arm_health();
    if (connect_waiter_ != nullptr) {
      complete(*connect_waiter_);
      connect_waiter_ = nullptr;
    }
    pump();
  }

  void on_acquire_reply(pending p, const reply& rep) {
    if (rep.type == reply::kind::ok && rep.token) {
      if (p.w == nullptr) {
        // Our caller gave up on this acquire (no reply in time); give the grant back.
        send_release(first_key(p.req), *rep.token);
        return;
      }
      std::vector<std::string> keys = p.req.has(field::keys) && !p.req.keys.empty()
                                          ? std::move(p.req.keys)
                                          : std::vector<std::string>{p.req.key};
      auto lease =
          std::make_shared<lease_state>(std::move(keys), *rep.token, p.req.mode, p.reentrant);
      lease->ttl = milliseconds(rep.ttl_ms.value_or(p.req.ttl_ms));
      lease->auto_extend = p.auto_extend;
      lease->on_lost = std::move(p.on_lost);
      leases_.add(lease);
      // The grant happened at most one one-way trip ago: count the ttl from its arrival.
      confirmed(*lease, steady::now(), lease->ttl);
      {
        std::lock_guard lock(p.w->m);
        p.w->lease = std::move(lease);
      }
      complete(*p.w);
      return;
    }
    if (p.w == nullptr) return;
    if (rep.type == reply::kind::ok) {
      complete(*p.w, error_ptr<ProtocolError>("keylock: grant without a token"));
      return;
    }
    if (code_of(rep) == "shutting_down") {
      // The daemon is stopping: wait for the next one, with what is left of the wait.
      state_ = conn_state::draining;
      const std::uint64_t id = p.req.id;
      p.past_wait = false;
      if (p.wait_until) p.timeout = add_deadline(*p.wait_until, deadline_kind::call, id);
      calls_.put_back(id, std::move(p));
      calls_.queue(id);
      return;
    }
    if (code_of(rep) == "timeout") {
      complete(*p.w, error_ptr<Timeout>("keylock: " + p.label() + " not acquired within " +
                                            std::to_string(p.wait.count()) + " ms: " + rep.message,
                                        errc::timeout));
      return;
    }
    complete(*p.w, error_from_reply(rep));
  }

  void on_extend_reply(const pending& p, const reply& rep) {
    const std::shared_ptr<lease_state>& lease = p.lease;
    if (p.w == nullptr) lease->renewing = false;
    if (lease->status.load() != lease_status::held) {
      if (p.w != nullptr) finish_lost_or_released(*p.w, *lease);
      return;
    }
    const bool not_held = code_of(rep) == "not_held";
    const extend_verdict verdict =
        judge_extend(rep.type == reply::kind::ok, not_held, p.w != nullptr);
    if (verdict == extend_verdict::confirmed) {
      const milliseconds ttl(rep.ttl_ms.value_or(p.req.ttl_ms));
      if (p.w != nullptr) lease->ttl = ttl;  // an explicit extend sets the ttl of renewals
      // The daemon extended at or after sent_at: the lease lasts at least until sent_at + ttl.
      confirmed(*lease, p.sent_at, ttl);
      if (p.w != nullptr) complete(*p.w);
      return;
    }
    if (verdict == extend_verdict::refused_kept) {
      complete(*p.w, error_from_reply(rep));  // renewals go on with the ttl that worked
      return;
    }
    const std::string why = std::string(p.w ? "extend" : "renewal") + " refused by the daemon: " +
                            (rep.message.empty() ? std::string(code_of(rep)) : rep.message);
    if (verdict == extend_verdict::release_and_lose) send_release(lease->key, lease->token);
    lose(lease, not_held ? lost_reason::not_held : lost_reason::expired, why);
    if (p.w != nullptr) {
      complete(*p.w, not_held
                         ? error_ptr<NotHeld>("keylock: lease on " + lease->label() + " " + why,
                                              errc::not_held)
                         : error_from_reply(rep));
    }
  }

  // The daemon holds `lease` until at least `from + ttl`: move its local expiry there and
  // schedule the next renewal at `from + ttl/3`.
  void confirmed(lease_state& lease, steady::time_point from, milliseconds ttl) {
    const lease_plan<steady> next = plan<steady>(from, ttl, lease.auto_extend, lease.renewing);
    cancel_deadline(lease.expires_at);
    lease.expires_at = add_deadline(next.expires_at, deadline_kind::lease_expiry, lease.token);
    if (next.renew_at) {
      cancel_deadline(lease.renew_at);
      lease.renew_at = add_deadline(*next.renew_at, deadline_kind::renew, lease.token);
    }
  }

  void renew(const std::shared_ptr<lease_state>& lease) {
    if (lease->status.load() != lease_status::held || lease->renewing) return;
    const std::uint64_t id = new_internal_call(op::extend);
    pending& p = calls_.at(id);
    p.req.key = lease->key;
    p.req.token = lease->token;
    p.req.ttl_ms = static_cast<std::uint64_t>(lease->ttl.count());
    p.req.set(field::key);
    p.req.set(field::token);
    p.req.set(field::ttl_ms);
    p.lease = lease;
    lease->renewing = true;
    send_or_queue(id);
  }

  // Sends `release` with noreply: nothing to wait for. The id is there for a daemon that
  // predates noreply; its answer matches no call and is dropped.
  void send_release(const std::string& key, std::uint64_t token) {
    // Not connected: the daemon dropped the connection's leases itself.
    if (state_ != conn_state::ready && state_ != conn_state::draining) return;
    request req;
    req.kind = op::release;
    req.id = calls_.take_id();
    req.key = key;
    req.token = token;
    req.noreply = true;
    req.set(field::id);
    req.set(field::key);
    req.set(field::token);
    req.set(field::noreply);
    append_request(out_, req);
    flush();
  }

  // release() called on the I/O thread (a Lease dropped inside a callback): fire and forget.
  void release_inline(const std::shared_ptr<lease_state>& lease) {
    if (lease->status.load() != lease_status::held) return;
    forget(lease, lease_status::released);
    send_release(lease->key, lease->token);
  }

  // Takes `lease` out of the renewal machinery; after this no renewal of it is ever sent.
  void forget(const std::shared_ptr<lease_state>& lease, lease_status status) {
    lease->status.store(status);
    cancel_deadline(lease->renew_at);
    cancel_deadline(lease->expires_at);
    leases_.erase(lease->token);
  }

  // Marks `lease` lost and runs its on_lost once. No-op unless it is held. Takes `lease` by
  // value: the callback may drop the last other reference (the leases_ entry is erased).
  // NOLINTNEXTLINE(performance-unnecessary-value-param)
  void lose(std::shared_ptr<lease_state> lease, lost_reason reason, std::string message) {
    if (lease->status.load() != lease_status::held) return;
    lease->lost_message = message;
    forget(lease, lease_status::lost);
    if (!lease->on_lost) return;
    defer([lease = std::move(lease), reason, message = std::move(message)]() mutable {
      try {
        lease->on_lost(
            lease_lost{lease->key, lease->keys, lease->token, reason, std::move(message)});
      } catch (...) {  // documented: callbacks must not throw; never let one kill the I/O thread
      }
    });
  }

  // A leader left with nothing due: the I/O thread watches again idle_watch_lag after the
  // last leader left. One timer serves every leader of that span (no re-arm per call).
  void arm_lag() {
    if (lag_armed_ || closing_) return;
    lag_armed_ = true;
    lag_timer_.expires_at(lead_ended_ + idle_watch_lag);
    lag_timer_.async_wait(guarded([this](boost::system::error_code ec) {
      lag_armed_ = false;
      if (ec || leading_ || watching_ || !connected()) return;
      if (steady::now() < lead_ended_ + idle_watch_lag) {
        arm_lag();  // another leader came and went since
      } else {
        watch();
      }
    }));
  }

  // ---- connection lifecycle -------------------------------------------------------------

  // The daemon being tried, or connected to (I/O thread).
  const std::string& address() const { return servers_[attempt_].text; }

  // One attempt (resolve, connect, hello) at servers_[attempt_].
  void start_connect() {
    state_ = conn_state::connecting;
    const std::uint64_t gen = ++gen_;
    connect_timeout_ =
        add_deadline(steady::now() + options_.connect_timeout, deadline_kind::connect, gen);
    const server_address& target = servers_[attempt_];
    resolver_.async_resolve(
        target.host, target.port,
        guarded([this, gen](boost::system::error_code ec,
                            const tcp::resolver::results_type& results) {
          if (gen != gen_) return;
          if (ec) {
            connect_failed(
                failure_kind::connection,
                "keylock: cannot resolve " + servers_[attempt_].host + ": " + ec.message());
            return;
          }
          asio::async_connect(
              socket_, results,
              guarded([this, gen](boost::system::error_code ec2, const tcp::endpoint& peer) {
                on_connect(ec2, peer, gen);
              }));
        }));
  }

  void on_connect(boost::system::error_code ec, const tcp::endpoint& peer, std::uint64_t gen) {
    if (gen != gen_) return;
    if (ec) {
      connect_failed(failure_kind::connection,
                     "keylock: cannot connect to keylockd at " + address() + ": " + ec.message());
      return;
    }
    // Asio 1.74 opens sockets without SOCK_CLOEXEC: keep ours out of processes the user
    // starts (keylock run's command must not keep the lock's connection open).
    fd_ = socket_.native_handle();
    protocol_ = peer.protocol();
    ::fcntl(fd_, F_SETFD, FD_CLOEXEC);
    boost::system::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);  // small pipelined frames: no Nagle
    socket_.set_option(asio::socket_base::keep_alive(true), ignored);
    reader_.clear();
    if (tls_context_) {
      start_tls(gen);
    } else {
      send_hello();
    }
  }

  // TLS: a session over the connected socket, its handshake driven by readiness waits on the
  // I/O thread and bounded by the connect deadline; `hello` follows once the server's
  // certificate is verified.
  void start_tls(std::uint64_t gen) {
    state_ = conn_state::securing;
    const std::string& name =
        options_.tls.server_name.empty() ? servers_[attempt_].host : options_.tls.server_name;
    tls_ = std::make_unique<tls_stream>(*tls_context_, fd_, name);
    continue_tls(gen);
  }

  void continue_tls(std::uint64_t gen) {
    const tls_result result = tls_->handshake();
    switch (result.status) {
      case tls_status::done:
        send_hello();
        return;
      case tls_status::want_read:
      case tls_status::want_write:
        socket_.async_wait(result.status == tls_status::want_read ? tcp::socket::wait_read
                                                                  : tcp::socket::wait_write,
                           guarded([this, gen](boost::system::error_code ec) {
                             if (gen != gen_ || state_ != conn_state::securing) return;
                             if (ec) {
                               connect_failed(failure_kind::connection,
                                              "keylock: TLS handshake with keylockd at " +
                                                  address() + " failed: " + ec.message());
                               return;
                             }
                             continue_tls(gen);
                           }));
        return;
      case tls_status::closed:
      case tls_status::failed:
        break;
    }
    connect_failed(failure_kind::connection, "keylock: TLS handshake with keylockd at " +
                                                 address() + " failed: " + tls_->error());
  }

  void send_hello() {
    state_ = conn_state::handshaking;
    const std::uint64_t id = new_internal_call(op::hello);
    pending& p = calls_.at(id);
    if (!options_.auth->empty()) {
      p.req.auth = *options_.auth;
      p.req.set(field::auth);
    }
    if (!options_.user->empty()) {
      p.req.user = *options_.user;
      p.req.set(field::user);
    }
    if (!options_.name.empty()) {
      p.req.client = options_.name;
      p.req.set(field::client);
    }
    write(p);
  }

  void close_socket() {
    boost::system::error_code ignored;
    resolver_.cancel();
    // The TLS session goes before the socket it uses. No close_notify into the middle of a
    // record being written.
    if (tls_ != nullptr) {
      if (!writing_) tls_->close_notify();
      tls_.reset();
    }
    if (socket_.is_open()) {
      socket_.close(ignored);
    } else if (fd_ >= 0) {
      ::close(fd_);  // released to a leader (unwatch)
    }
    fd_ = -1;
    watching_ = false;
    ++watch_seq_;
    ++gen_;  // every handler of the old connection is now stale
    out_.clear();
    reader_.clear();
    if (leading_) wake_leader();  // its poll would not notice the close
  }

  // A connection attempt (resolve, connect or hello) failed: try the next daemon of this
  // round at once; after a whole round, report (the constructor's round) or back off.
  void connect_failed(failure_kind kind, const std::string& message) {
    last_error_ = message;
    last_failure_ = kind;
    close_socket();
    state_ = conn_state::disconnected;
    cancel_deadline(connect_timeout_);
    drop_calls();
    if (connect_waiter_ != nullptr) {
      // The constructor's round: remember every failure; the gravest kind names the exception
      // (a refused secret is a configuration error to show, not an outage).
      if (!round_errors_.empty()) round_errors_ += "; ";
      round_errors_ += message;
      if (kind == failure_kind::auth ||
          (kind == failure_kind::protocol && round_failure_ == failure_kind::connection)) {
        round_failure_ = kind;
      }
    }
    attempt_ = (attempt_ + 1) % servers_.size();
    if (round_left_ > 1) {
      --round_left_;
      // Posted: the failed connection's handlers (already aborted) run first, and this may be
      // called from deep inside them.
      asio::post(ex_, guarded([this] {
                   if (!closing_ && state_ == conn_state::disconnected && !reconnect_)
                     start_connect();
                 }));
      return;
    }
    round_left_ = servers_.size();
    if (connect_waiter_ != nullptr) {  // the constructor's round: report, do not retry
      std::string all = message;
      if (servers_.size() > 1) {
        all = "keylock: no keylockd of ";
        all += options_.server;
        all += " answered: ";
        all += round_errors_;
      }
      complete(*connect_waiter_, make_failure(round_failure_, all));
      connect_waiter_ = nullptr;
      return;
    }
    schedule_reconnect();
  }

  // An established connection ended.
  void on_drop(const std::string& why, failure_kind kind = failure_kind::connection) {
    if (state_ == conn_state::handshaking) {
      connect_failed(
          kind, "keylock: connection to keylockd at " + address() + " ended during hello: " + why);
      return;
    }
    last_error_ = "keylock: connection to keylockd at " + address() + " lost: " + why;
    last_failure_ = kind;
    close_socket();
    state_ = conn_state::disconnected;
    // The daemon released every lease of this connection.
    for (const auto& lease : leases_.snapshot()) {
      lose(lease, lost_reason::connection_lost, last_error_);
    }
    if (!down_since_) {
      down_since_ = steady::now();
      outage_at_ =
          add_deadline(*down_since_ + options_.connect_timeout, deadline_kind::outage, 0);
    }
    drop_calls();
    // Failover: the next round starts with the next daemon of the list; this one comes last.
    attempt_ = (attempt_ + 1) % servers_.size();
    round_left_ = servers_.size();
    schedule_reconnect();
  }

  // Settles the calls that were on the wire of a connection that is gone (the rules are
  // call_table::after_drop's).
  void drop_calls() {
    calls_.after_drop(steady::now(), [this](std::uint64_t, pending& p, drop_outcome outcome) {
      switch (outcome) {
        case drop_outcome::resend:  // with what is left of its wait, on the next connection
          p.past_wait = false;
          return;
        case drop_outcome::wait_over:
          cancel_deadline(p.timeout);
          complete(*p.w, error_ptr<ConnectionError>(
                             "keylock: " + p.label() + " not acquired within " +
                             std::to_string(p.wait.count()) + " ms, and not because it is " +
                             "busy: " + last_error_));
          return;
        case drop_outcome::released:
          cancel_deadline(p.timeout);
          complete(*p.w);  // the daemon dropped the lease with the connection
          return;
        case drop_outcome::lease_lost:  // on_drop lost every lease first
          cancel_deadline(p.timeout);
          finish_lost_or_released(*p.w, *p.lease);
          return;
        case drop_outcome::failed:
          cancel_deadline(p.timeout);
          complete(*p.w, make_failure(failure_kind::connection, last_error_));
          return;
        case drop_outcome::forgotten:  // hello, renewals, internal releases, abandoned
          cancel_deadline(p.timeout);
          return;
      }
    });
  }

  void schedule_reconnect() {
    if (closing_) return;
    const milliseconds delay = backoff_.next(rng_);
    reconnect_ = add_deadline(steady::now() + delay, deadline_kind::reconnect, 0);
  }

  // The Client is being destroyed.
  void close_all() {
    closing_ = true;
    close_socket();
    state_ = conn_state::disconnected;
    for (const auto& lease : leases_.snapshot()) {
      lose(lease, lost_reason::client_closed, "keylock: the client was closed");
    }
    calls_.clear([this](std::uint64_t, pending& p) {
      if (p.w != nullptr)
        complete(*p.w, error_ptr<ConnectionError>("keylock: the client is closed"));
    });
    if (connect_waiter_ != nullptr) {
      complete(*connect_waiter_, error_ptr<ConnectionError>("keylock: the client is closed"));
      connect_waiter_ = nullptr;
    }
    deadlines_.clear();
    timer_.cancel();
    lag_timer_.cancel();
    // Last, without io_mtx_: the callbacks deferred so far (those of the closing included).
    asio::post(ex_, [this, keep = keep_alive()] {
      run_deferred();
      if (user_io_ != nullptr) return;  // the user's io_context goes on
      work_.reset();
      ioc_.stop();
    });
  }

  // ---- deadlines ------------------------------------------------------------------------

  deadline_index::iterator add_deadline(steady::time_point when, deadline_kind kind,
                                        std::uint64_t ref) {
    const auto it = deadlines_.add(when, deadline{kind, ref});
    arm();
    return it;
  }

  void cancel_deadline(deadline_handle& handle) { deadlines_.cancel(handle); }

  // Keeps the one timer set for the earliest deadline. A wait already set for an earlier or
  // equal time stays: when it fires it re-arms for whatever is first then.
  void arm() {
    const auto earliest = deadlines_.earliest();
    if (!earliest || closing_) return;
    const auto first = *earliest;
    if (armed_for_ && *armed_for_ <= first) return;
    armed_for_ = first;
    timer_.expires_at(first);
    timer_.async_wait(guarded([this](boost::system::error_code ec) {
      if (ec == asio::error::operation_aborted) return;  // re-armed for an earlier time
      armed_for_.reset();
      on_timer();
    }));
  }

  void on_timer() {
    const auto now = steady::now();
    while (!closing_) {
      const std::optional<deadline> due = deadlines_.pop_due(now);
      if (!due) break;
      clear_handle(*due);  // the entry is gone: its owner must not cancel it again
      fire(*due);
    }
    arm();
  }

  void clear_handle(const deadline& due) {
    switch (due.kind) {
      case deadline_kind::renew:
      case deadline_kind::lease_expiry:
        if (const auto lease = leases_.find(due.ref)) {
          (due.kind == deadline_kind::renew ? lease->renew_at : lease->expires_at).reset();
        }
        return;
      case deadline_kind::call:
        if (pending* p = calls_.find(due.ref)) p->timeout.reset();
        return;
      case deadline_kind::connect:
        connect_timeout_.reset();
        return;
      case deadline_kind::reconnect:
        reconnect_.reset();
        return;
      case deadline_kind::outage:
        outage_at_.reset();
        return;
      case deadline_kind::health:
        health_at_.reset();
        return;
    }
  }

  void fire(const deadline& due) {
    switch (due.kind) {
      case deadline_kind::renew:
        if (const auto lease = leases_.find(due.ref)) renew(lease);
        return;
      case deadline_kind::lease_expiry:
        if (const auto lease = leases_.find(due.ref)) {
          send_release(lease->key, lease->token);  // in case the daemon was merely slow
          lose(lease, lost_reason::expired,
               "no renewal confirmed by the daemon within the lease's ttl of " +
                   std::to_string(lease->ttl.count()) + " ms");
        }
        return;
      case deadline_kind::call:
        on_call_timeout(due.ref);
        return;
      case deadline_kind::connect:
        if (due.ref == gen_ &&
            (state_ == conn_state::connecting || state_ == conn_state::securing ||
             state_ == conn_state::handshaking)) {
          connect_failed(failure_kind::connection,
                         "keylock: cannot connect to keylockd at " + address() +
                             (state_ == conn_state::securing ? ": TLS handshake timed out after "
                                                             : ": timed out after ") +
                             std::to_string(options_.connect_timeout.count()) + " ms");
        }
        return;
      case deadline_kind::reconnect:
        if (state_ == conn_state::disconnected) start_connect();
        return;
      case deadline_kind::outage:
        if (state_ != conn_state::ready) begin_outage();
        return;
      case deadline_kind::health:
        if (due.ref == gen_ && connected()) health_tick();
        return;
    }
  }

  // Heartbeat (client_options::health_check_interval).
  void arm_health() {
    if (options_.health_check_interval <= milliseconds(0)) return;
    cancel_deadline(health_at_);
    health_at_ = add_deadline(steady::now() + options_.health_check_interval,
                              deadline_kind::health, gen_);
  }

  void health_tick() {
    if (heard_) {
      heard_ = false;  // the next tick looks at what this interval brings
    } else if (ping_out_) {
      on_drop("no reply to a health check within " +
              std::to_string(options_.health_check_interval.count()) +
              " ms (the connection is dead)");
      return;
    } else if (at_stake()) {
      ping_out_ = true;
      send_or_queue(new_internal_call(op::ping));
    }
    arm_health();
  }

  // Whether a dead connection would cost anything: a lease held, or an acquire at the daemon.
  bool at_stake() const {
    if (!leases_.empty()) return true;
    return calls_.any_of(
        [](const pending& p) { return p.is_acquire() && p.state == call_state::sent; });
  }

  // Disconnected for connect_timeout: every waiting acquire fails, and every new one fails at
  // once, with ConnectionError until a connection is ready again.
  void begin_outage() {
    outage_ = true;
    const std::vector<std::uint64_t> ids = calls_.ids_where([](const pending& p) {
      return p.is_acquire() && p.user() && p.state == call_state::queued;
    });
    for (const std::uint64_t id : ids) {  // in submission order
      pending done = std::move(*calls_.take(id));
      cancel_deadline(done.timeout);
      complete(*done.w, outage_error(done.label()));
    }
  }

  std::exception_ptr outage_error(const std::string& label) const {
    const auto down = down_since_ ? std::chrono::duration_cast<milliseconds>(steady::now() -
                                                                             *down_since_)
                                  : milliseconds(0);
    return error_ptr<ConnectionError>("keylock: cannot acquire " + label +
                                      ": no keylockd reachable for " +
                                      std::to_string(down.count()) + " ms (connect_timeout " +
                                      std::to_string(options_.connect_timeout.count()) + " ms)" +
                                      (last_error_.empty() ? std::string() : ": " + last_error_));
  }

  void on_call_timeout(std::uint64_t id) {
    pending* found = calls_.find(id);
    if (found == nullptr || found->w == nullptr) return;
    pending& p = *found;
    if (p.req.kind == op::acquire && p.state == call_state::sent) {
      if (!p.past_wait) {
        // The daemon answers its own wait timeout; this bounds a daemon that never does.
        p.past_wait = true;
        p.timeout = add_deadline(steady::now() + options_.request_timeout, deadline_kind::call, id);
        return;
      }
      waiter& w = *p.w;
      p.w = nullptr;  // abandoned: a late grant is released at once
      complete(w, error_ptr<ConnectionError>("keylock: no reply to acquire of " + p.label() +
                                             " from keylockd at " + address()));
      const std::uint64_t cancel_id = new_internal_call(op::cancel);  // may rehash calls_
      pending& cancel = calls_.at(cancel_id);
      cancel.req.target = id;
      cancel.req.set(field::target);
      send_or_queue(cancel_id);
      return;
    }
    // Take the call out before acting: lose() runs a user callback that may add calls.
    pending done = std::move(*calls_.take(id));
    const bool is_connected = state_ == conn_state::ready || state_ == conn_state::draining;
    if (done.req.kind == op::acquire) {  // queued: the wait ran out before it could be sent
      // Not contention (the daemon never judged the key busy): an outage, ConnectionError.
      const std::string why = is_connected          ? "the daemon is shutting down"
                              : last_error_.empty() ? "not connected"
                                                    : last_error_;
      complete(*done.w,
               error_ptr<ConnectionError>("keylock: " + done.label() + " not acquired within " +
                                          std::to_string(done.wait.count()) +
                                          " ms, and not because it is " + "busy: " + why));
      return;
    }
    if (done.state == call_state::queued && !is_connected) {
      complete(*done.w, make_failure(last_failure_, last_error_.empty()
                                                        ? "keylock: not connected to keylockd"
                                                        : last_error_));
    } else {
      complete(*done.w, error_ptr<ConnectionError>(
                            "keylock: no reply from keylockd at " + address() + " within " +
                            std::to_string(options_.request_timeout.count()) + " ms"));
    }
    if (done.req.kind == op::extend && done.lease) {
      lose(done.lease, lost_reason::expired, "extend got no reply from the daemon");
    }
  }

  client_options options_;
  // The configured daemons, in order; never empty, never changed after construction (server()
  // hands out references to their text).
  std::vector<server_address> servers_;
  std::vector<std::string> server_list_;  // their text, for servers()
  // The daemon of the connection in use (of its last successful hello); read by any thread.
  std::atomic<std::size_t> current_{0};

  asio::io_context ioc_;  // the I/O thread's; unused on the user's io_context
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  asio::io_context* const user_io_;  // the user's, or null
  // Where every handler runs: ioc_, or the user's io_context, which any number of threads may
  // run (every handler holds io_mtx_, and run_deferred keeps user code in order).
  const asio::io_context::executor_type ex_;
  tcp::resolver resolver_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  asio::steady_timer lag_timer_;  // idle_watch_lag after the last leader: watch again
  const int wake_fd_;             // eventfd: wakes a leader out of its poll
  std::thread thread_;
  std::thread::id io_thread_id_;

  std::mutex mtx_;  // guards closed_ and server_version_
  bool closed_ = false;
  std::string server_version_;

  // Reentrant holds by the thread that acquired them (any thread; guarded by reentry_mtx_):
  // each with its keys sorted. A few per thread at most, so a vector is searched.
  struct reentry {
    std::vector<std::string> keys;
    std::shared_ptr<lease_state> lease;
  };
  std::mutex reentry_mtx_;
  std::unordered_map<std::thread::id, std::vector<reentry>> reentries_;

  // Guards the I/O state: everything below, and every use of the socket, resolver and timers.
  std::mutex io_mtx_;
  bool closing_ = false;
  conn_state state_ = conn_state::disconnected;
  std::uint64_t gen_ = 0;  // connection generation: handlers of older ones are ignored
  call_table<pending> calls_;  // requests by id, and those waiting for a connection
  lease_book<lease_state> leases_;  // held, by token
  deadline_index deadlines_;
  std::optional<steady::time_point> armed_for_;
  deadline_handle connect_timeout_;
  deadline_handle reconnect_;
  backoff backoff_{milliseconds(0), milliseconds(0)};  // set from options_ in the constructor
  // Outages: since when no connection has been ready (set when one drops), the deadline
  // connect_timeout after that, and whether it passed (acquires fail with ConnectionError).
  std::optional<steady::time_point> down_since_;
  deadline_handle outage_at_;
  bool outage_ = false;
  // Heartbeat: something was read since the last tick; a ping of ours is unanswered.
  deadline_handle health_at_;
  bool heard_ = false;
  bool ping_out_ = false;
  // Failover: attempt_ indexes the daemon being tried (or connected to). A round tries each
  // daemon once, in list order from attempt_ and wrapping round; round_left_ counts the tries
  // left in it, this one included. Backoff comes only between rounds.
  std::size_t attempt_ = 0;
  std::size_t round_left_ = 0;
  std::string round_errors_;  // the constructor's round: every failure, for its exception
  failure_kind round_failure_ = failure_kind::connection;  // ... and the gravest kind
  std::minstd_rand rng_;
  waiter* connect_waiter_ = nullptr;
  std::string last_error_;
  failure_kind last_failure_ = failure_kind::connection;
  // The connection's socket. socket_ holds it (registered with the reactor) while connecting,
  // while the I/O thread watches it and while an async_write is out; a leader takes it out
  // (unwatch), and it stays open as fd_.
  int fd_ = -1;
  tcp protocol_ = tcp::v4();
  // TLS (client_options::tls): the context of every connection, null when TLS is off; the
  // session of the current connection, null between connections and without TLS. Whether
  // tls_ is set is the one branch the plain path pays.
  std::unique_ptr<tls_context> tls_context_;
  std::unique_ptr<tls_stream> tls_;
  std::string out_;   // frames not yet handed to a write
  std::string wbuf_;  // the frames of the write in progress
  bool writing_ = false;
  // Who reads the socket: the I/O thread while `watching_` (an async_wait is out), else a
  // caller while `leading_`, else nobody until lag_timer_ fires or a call is written.
  bool watching_ = false;
  std::uint64_t watch_seq_ = 0;  // of the latest watch: older handlers are stale
  bool leading_ = false;
  waiter* lead_waiter_ = nullptr;  // the leader's own call
  std::thread::id lead_thread_;
  steady::time_point lead_ended_{};
  steady::duration recent_answer_{};  // moving average of the wait for an answer (note_answer)
  bool spinning_ = false;             // spin_step is queued (spin_for_answer)
  steady::time_point spin_until_{};
  bool lag_armed_ = false;
  std::vector<std::function<void()>> deferred_;  // user code for the I/O thread (defer)
  bool deferring_ = false;                       // a thread is running it (run_deferred)
  std::array<char, 16384> rchunk_{};
  frame_reader reader_{max_reply_bytes};
};

}  // namespace detail

// ---- Lease --------------------------------------------------------------------------------

Lease::Lease() noexcept = default;

Lease::Lease(std::shared_ptr<detail::client_impl> client,
             std::shared_ptr<detail::lease_state> state)
    : client_(std::move(client)), state_(std::move(state)) {}

Lease::Lease(Lease&& other) noexcept
    : client_(std::move(other.client_)), state_(std::move(other.state_)) {}

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release_quietly();
    client_ = std::move(other.client_);
    state_ = std::move(other.state_);
  }
  return *this;
}

Lease::~Lease() { release_quietly(); }

const std::string& Lease::key() const noexcept {
  static const std::string empty;
  return state_ ? state_->key : empty;
}

const std::vector<std::string>& Lease::keys() const noexcept {
  static const std::vector<std::string> empty;
  return state_ ? state_->keys : empty;
}

lock_mode Lease::mode() const noexcept { return state_ ? state_->mode : lock_mode::exclusive; }

int Lease::depth() const noexcept { return state_ ? state_->depth.load() : 0; }

std::uint64_t Lease::token() const noexcept { return state_ ? state_->token : 0; }

bool Lease::valid() const noexcept {
  return state_ && state_->status.load() == detail::lease_status::held;
}

namespace {

class client_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "keylock"; }
  std::string message(int value) const override {
    switch (static_cast<client_errc>(value)) {
      case client_errc::timeout:
        return "the key stayed busy for the whole wait";
      case client_errc::not_held:
        return "the lease is not held";
      case client_errc::connection:
        return "keylockd could not be reached";
      case client_errc::cancelled:
        return "the acquire was cancelled";
      case client_errc::protocol:
        return "the daemon rejected the request";
      case client_errc::auth:
        return "the daemon refused the secret";
      case client_errc::limit_exceeded:
        return "a daemon limit was hit";
      case client_errc::conflict:
        return "another limit than the live key's";
      case client_errc::reentrancy:
        return "a reentrant acquire that cannot nest";
      case client_errc::denied:
        return "the daemon's ACL denies this user the operation";
      case client_errc::other:
        break;
    }
    return "keylock error";
  }
};

// Runs fn, turning what it throws into `ec`.
template <class Fn>
auto without_exceptions(std::error_code& ec, Fn&& fn) -> decltype(fn()) {
  ec.clear();
  try {
    return fn();
  } catch (const std::exception& e) {
    ec = error_code_of(e);
  }
  if constexpr (!std::is_void_v<decltype(fn())>) return {};
}

}  // namespace

const std::error_category& client_category() noexcept {
  static const client_category_impl category;
  return category;
}

std::error_code error_code_of(const std::exception& e) noexcept {
  if (dynamic_cast<const Timeout*>(&e) != nullptr) return client_errc::timeout;
  if (dynamic_cast<const NotHeld*>(&e) != nullptr) return client_errc::not_held;
  if (dynamic_cast<const ConnectionError*>(&e) != nullptr) return client_errc::connection;
  if (dynamic_cast<const Cancelled*>(&e) != nullptr) return client_errc::cancelled;
  if (dynamic_cast<const ProtocolError*>(&e) != nullptr) return client_errc::protocol;
  if (dynamic_cast<const AuthError*>(&e) != nullptr) return client_errc::auth;
  if (dynamic_cast<const LimitExceeded*>(&e) != nullptr) return client_errc::limit_exceeded;
  if (dynamic_cast<const Conflict*>(&e) != nullptr) return client_errc::conflict;
  if (dynamic_cast<const ReentrancyError*>(&e) != nullptr) return client_errc::reentrancy;
  if (dynamic_cast<const Denied*>(&e) != nullptr) return client_errc::denied;
  return client_errc::other;
}

void Lease::extend(std::chrono::milliseconds ttl, std::error_code& ec) {
  without_exceptions(ec, [&] { extend(ttl); });
}

void Lease::release(release_mode mode, std::error_code& ec) {
  without_exceptions(ec, [&] { release(mode); });
}

bool Lease::owned() const {
  if (!state_) return false;
  const reply rep = client_->inspect(state_->key);
  return std::any_of(rep.holders.begin(), rep.holders.end(),
                     [&](const holder_info& h) { return h.token == state_->token; });
}

void Lease::extend(std::chrono::milliseconds ttl) {
  if (!state_) throw std::logic_error("keylock: extend() of an empty Lease");
  client_->extend(state_, ttl);
}

void Lease::release(release_mode mode) {
  if (!state_) return;
  auto client = std::move(client_);
  auto state = std::move(state_);
  client->release(state, mode);
}

void Lease::start_release(release_mode mode, std::function<void(std::exception_ptr)> done) {
  if (!state_) {
    done(nullptr);  // as release() of an empty Lease: nothing to do
    return;
  }
  auto client = std::move(client_);
  auto state = std::move(state_);
  client->start_release(state, mode, std::move(done));
}

void Lease::start_extend(std::chrono::milliseconds ttl,
                         std::function<void(std::exception_ptr)> done) {
  if (!state_) {
    done(detail::error_ptr<std::logic_error>("keylock: extend() of an empty Lease"));
    return;
  }
  client_->start_extend(state_, ttl, std::move(done));
}

void Lease::release_quietly() noexcept {
  if (!state_) return;
  auto client = std::move(client_);
  auto state = std::move(state_);
  client->release_quietly(state);
}

// ---- Client -------------------------------------------------------------------------------

Client::Client(client_options options)
    : impl_(std::make_shared<detail::client_impl>(std::move(options), nullptr)) {
  impl_->start();
}

Client::Client(boost::asio::io_context& io, client_options options)
    : impl_(std::make_shared<detail::client_impl>(std::move(options), &io)) {
  impl_->start();
}

Client::~Client() { impl_->shutdown(); }

Lease Client::acquire(std::string_view key, const AcquireOptions& options) {
  return Lease(impl_, impl_->acquire({std::string(key)}, detail::key_shape::one_key, options));
}

void Client::start_acquire(std::vector<std::string> keys, bool as_set, AcquireOptions options,
                           std::function<void(std::exception_ptr, Lease)> done) {
  if (keys.empty()) {
    done(detail::error_ptr<std::invalid_argument>("keylock: start_acquire of no key"), Lease());
    return;
  }
  const detail::key_shape shape = as_set ? detail::key_shape::key_set : detail::key_shape::one_key;
  impl_->start_acquire(std::move(keys), shape, std::move(options), std::move(done));
}

std::optional<Lease> Client::acquire(std::string_view key, const AcquireOptions& options,
                                     std::error_code& ec) {
  return without_exceptions(ec, [&] { return std::optional<Lease>(acquire(key, options)); });
}

std::optional<Lease> Client::acquire_all(const std::vector<std::string>& keys,
                                         const AcquireOptions& options, std::error_code& ec) {
  return without_exceptions(ec, [&] { return std::optional<Lease>(acquire_all(keys, options)); });
}

Lease Client::acquire_all(const std::vector<std::string>& keys, const AcquireOptions& options) {
  return Lease(impl_, impl_->acquire(keys, detail::key_shape::key_set, options));
}

std::optional<Lease> Client::try_acquire_all(const std::vector<std::string>& keys,
                                             AcquireOptions options) {
  if (!options.wait) options.wait = std::chrono::milliseconds(0);
  try {
    return acquire_all(keys, options);
  } catch (const Timeout&) {
    return std::nullopt;
  }
}

std::optional<Lease> Client::try_acquire(std::string_view key, AcquireOptions options) {
  if (!options.wait) options.wait = std::chrono::milliseconds(0);
  try {
    return acquire(key, options);
  } catch (const Timeout&) {
    return std::nullopt;
  }
}

std::chrono::nanoseconds Client::ping() { return impl_->ping(); }

key_info Client::inspect(std::string_view key) {
  reply rep = impl_->inspect(key);
  key_info info;
  info.held = rep.held.value_or(false);
  info.holders = std::move(rep.holders);
  info.waiters = rep.waiters.value_or(0);
  info.limit = rep.limit.value_or(0);
  info.cluster = rep.cluster;
  return info;
}

bool Client::locked(std::string_view key) { return impl_->inspect(key).held.value_or(false); }

void Client::release(std::string_view key, std::uint64_t token) {
  impl_->release_token(key, token);
}

stats_info Client::stats() {
  reply rep = impl_->stats();
  if (!rep.stats) throw ProtocolError("keylock: stats reply without counters");
  return *rep.stats;
}

top_info Client::top(std::size_t n) {
  reply rep = impl_->top(n);
  if (!rep.stats) throw ProtocolError("keylock: top reply without counters");
  top_info info;
  info.stats = *rep.stats;
  if (rep.queues) info.queues = std::move(*rep.queues);
  if (rep.oldest) info.oldest = std::move(*rep.oldest);
  return info;
}

const std::string& Client::server() const noexcept { return impl_->server(); }

const std::vector<std::string>& Client::servers() const noexcept { return impl_->servers(); }

std::string Client::server_version() const { return impl_->server_version(); }

}  // namespace keylock
