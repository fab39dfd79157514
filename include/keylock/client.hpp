// keylock C++ client: a blocking, thread-safe API over one multiplexed connection to keylockd.
//
// One `Client` is meant to be shared by every thread of a process. It owns one TCP connection
// and one private I/O thread; requests from any number of threads are pipelined over the
// connection and matched to their replies by `id`. Callers block until their reply arrives;
// a caller reads its own reply when no other thread is reading the connection, so the common
// call costs no thread hop (client.cpp explains the handover with the I/O thread).
//
//   keylock::Client client;  // KEYLOCK_SERVER, else 127.0.0.1:7400; KEYLOCK_AUTH
//   client.with_lock("report:monthly", [](const keylock::Lease& lease) {
//     write_report(lease.token());  // pass the fencing token on to storage
//   });
//   client.with_shared_lock("config:prices", read_prices);  // readers together
//   client.with_lock_all({"acct:17", "acct:42"}, transfer);  // both keys or neither
//
// Invariants:
// - A `Lease` with auto_extend is renewed (`extend`) at a third of its ttl by the I/O thread
//   until it is released, destroyed or lost. No renewal is ever sent after release() returns.
// - A lease becomes invalid, and its `on_lost` callback runs exactly once, when the daemon
//   refuses its renewal, sends its `expired` event, when no renewal was confirmed within its
//   ttl (the daemon is unresponsive), or when the connection drops (the daemon releases every
//   lease of a closed connection). on_lost is not called for a lease released by its owner.
// - Callbacks (`on_lost`) run on the I/O thread, even when another thread read the frame that
//   caused them, and with no lock of the client's held: they must be quick, must not block and
//   must not call blocking Client or Lease functions (those throw std::logic_error there).
//   Exceptions thrown by a callback are swallowed.
// - After a connection loss the client reconnects with exponential backoff and jitter, and
//   sends `hello` (with the user and secret) first on every connection; with TLS
//   (client_options::tls) every connection first completes a TLS handshake that verifies the
//   daemon's certificate. Waiting acquires are sent
//   again with the wait they have left; other requests in flight fail with ConnectionError.
// - Failover (cluster mode): with several servers configured ("a:7400,b:7400") the client uses
//   one at a time. When its connection cannot be made or drops, it tries the others, in list
//   order starting after the one that failed and wrapping round, each once per round; a failed
//   try moves to the next at once, and the backoff applies between whole rounds. Leases held
//   through the lost daemon are lost as on any connection loss (connection_lost); waiting
//   acquires and later calls go to the daemon that answers next.
// - A lease over several keys (acquire_all) is one lease: one token, one ttl, one renewal,
//   released and lost whole.
// - Reentrancy is opt-in per acquire (AcquireOptions::reentrant) and local to this Client and
//   the calling thread: see AcquireOptions::reentrant. On the wire there is none.
//
// This header has no Asio or JSON dependency; everything networked lives in client/client.cpp.
#pragma once

#include "keylock/protocol.hpp"

#include <charconv>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <iterator>
#include <locale>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;  // keylock/async.hpp includes Asio; this header does not
}  // namespace boost::asio

namespace keylock {

// For code that does not use exceptions: the error_code overloads below report what the
// throwing calls throw as one of these (category "keylock"), one per exception class.
enum class client_errc {
  timeout = 1,     // Timeout: the key was busy for the whole wait
  not_held,        // NotHeld
  connection,      // ConnectionError
  cancelled,       // Cancelled
  protocol,        // ProtocolError
  auth,            // AuthError
  limit_exceeded,  // LimitExceeded
  conflict,        // Conflict
  reentrancy,      // ReentrancyError
  other,           // any other keylock::Error or std::exception
  denied,          // Denied (after `other`: the earlier values stay as they were)
};
const std::error_category& client_category() noexcept;
inline std::error_code make_error_code(client_errc e) noexcept {
  return {static_cast<int>(e), client_category()};
}
// The client_errc of an exception the client threw.
std::error_code error_code_of(const std::exception& e) noexcept;

}  // namespace keylock

template <>
struct std::is_error_code_enum<keylock::client_errc> : std::true_type {};

namespace keylock {

// ---------------------------------------------------------------------------------------------
// Errors. Every error the client reports derives from keylock::Error, which carries the daemon's
// error code when there is one, and the daemon's message (or the client's own) as what().

// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, std::optional<errc> code = std::nullopt)
      : std::runtime_error(message), code_(code) {}
  // The wire error code the daemon answered with; nullopt for client-side failures
  // (connection, protocol) and for codes newer than this build.
  std::optional<errc> code() const noexcept { return code_; }

 private:
  std::optional<errc> code_;
};

// acquire() was not granted within AcquireOptions::wait (daemon code `timeout`).
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class Timeout : public Error {
 public:
  using Error::Error;
};
// release()/extend() of a lease that is no longer held: it expired, its renewal was refused,
// or its connection dropped (daemon code `not_held`, or the client's own knowledge).
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class NotHeld : public Error {
 public:
  using Error::Error;
};
// The daemon could not be reached, the connection dropped while the request was in flight,
// no reply came within client_options::request_timeout, or the Client is shutting down.
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class ConnectionError : public Error {
 public:
  using Error::Error;
};
// The daemon rejected the request as malformed (`bad_request`, `unknown_op`,
// `frame_too_large`, e.g. a key longer than the daemon's max_key_bytes), or sent a frame the
// client could not decode.
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class ProtocolError : public Error {
 public:
  using Error::Error;
};
// The daemon requires a secret and refused ours (`unauthenticated`).
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class AuthError : public Error {
 public:
  using Error::Error;
};
// A reentrant acquire (AcquireOptions::reentrant) that cannot nest inside what this thread
// already holds through this Client: the same key in the other mode (shared inside exclusive or
// the reverse), or a set of keys that overlaps a held set without being equal to it. Nothing
// was sent to the daemon; code() is nullopt. Queueing instead would wait on ourselves.
// NOLINTNEXTLINE(readability-identifier-naming): public name in the style of issue 3's
class ReentrancyError : public Error {
 public:
  using Error::Error;
};
// A daemon limit was hit: keys, waiters per key, waiting acquires per connection
// (`limit_exceeded`).
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class LimitExceeded : public Error {
 public:
  using Error::Error;
};
// A waiting acquire was cancelled through AcquireOptions::stop. Nothing is held: the request
// was withdrawn on the daemon, and a grant that crossed the cancel is released at once.
// code() is nullopt.
// NOLINTNEXTLINE(readability-identifier-naming): public name in the style of issue 3's
class Cancelled : public Error {
 public:
  using Error::Error;
};
// The daemon knows who we are (client_options::user) but its ACL does not let that user do this
// op on this key (`denied`): lock (acquire, release, extend), inspect, or admin (stats, top, a
// force release). The connection stays open and usable for what the user may do.
// NOLINTNEXTLINE(readability-identifier-naming): public name in the style of issue 3's
class Denied : public Error {
 public:
  using Error::Error;
};
// acquire() named a limit other than the live key's limit (`conflict`).
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class Conflict : public Error {
 public:
  using Error::Error;
};

// ---------------------------------------------------------------------------------------------
// Options.

// TLS to the daemon (its `listen_tls` port). Every field left at its default is taken from the
// environment, so that an unchanged program can be pointed at a TLS daemon.
struct tls_options {
  // Whether to speak TLS. nullopt: on when $KEYLOCK_TLS is "1" or a CA file is given (ca_file
  // or $KEYLOCK_TLS_CA), else off. false forces plain TCP whatever the environment says.
  std::optional<bool> enabled;
  // PEM file of the CAs that may sign the daemon's certificate. Empty: $KEYLOCK_TLS_CA, else
  // the system's default CAs (OpenSSL's default paths).
  std::string ca_file;
  // PEM certificate chain of this client, for a daemon that requires client certificates
  // (its tls_ca_file: mutual TLS). Empty: $KEYLOCK_TLS_CERT, else none.
  std::string cert_file;
  // The private key of cert_file (PEM, not encrypted). Empty: $KEYLOCK_TLS_KEY, else read from
  // cert_file.
  std::string key_file;
  // The name the daemon's certificate must carry: a host name (also sent as SNI) or an IP
  // address (matched against the certificate's IP entries). Empty: $KEYLOCK_TLS_SERVER_NAME,
  // else the host of the address being connected to (each server of a list its own).
  std::string server_name;
};

// How a Client connects. Every field has a documented default; an empty `server` and unset
// `auth`, `user` and `tls` fields are taken from the environment.
struct client_options {
  // "host:port", "host" (port 7400) or "[v6addr]:port", or several of them separated by commas
  // ("10.0.0.1:7400,10.0.0.2:7400", blanks around each ignored): daemons of one cluster, tried
  // in this order (see "Failover" above). Empty: $KEYLOCK_SERVER (which takes a list too), else
  // "127.0.0.1:7400".
  std::string server;
  // The daemon's shared secret, sent in `hello` on every connection. nullopt: $KEYLOCK_AUTH when
  // set and non-empty, else none. An empty string forces "no secret".
  std::optional<std::string> auth;
  // The daemon user to authenticate as (its users_file; ≤ 256 bytes), sent in `hello` with
  // `auth` as that user's secret; the daemon's ACL then decides what this client may do
  // (Denied). nullopt: $KEYLOCK_USER when set and non-empty, else none (auth is then the
  // daemon's shared secret). An empty string forces "no user".
  std::optional<std::string> user;
  // TLS: off unless enabled here or by the environment (see tls_options). The certificates are
  // loaded by the constructor; a file that cannot be loaded is std::invalid_argument there.
  tls_options tls;
  // A name for people, shown by `inspect` (≤ 256 bytes). Empty: none.
  std::string name;
  // Bound on each connection attempt (resolve, connect, TLS handshake, hello) to one server.
  // The constructor fails after one attempt at each server of the list (so it may take this times
  // the number of servers); later reconnects retry forever with backoff.
  std::chrono::milliseconds connect_timeout{5000};
  // Bound on the reply to any request other than acquire (ping, inspect, stats, release,
  // extend), and on how long such a request waits for a connection while reconnecting.
  std::chrono::milliseconds request_timeout{10000};
  // Reconnect backoff: the first retry after `backoff_initial`, doubling up to `backoff_max`;
  // each delay is drawn uniformly from [d/2, d] (jitter) so that many clients of a restarted
  // daemon do not reconnect in lockstep. With several servers, the delay comes before each
  // round of tries (one per server), not between the servers of a round.
  std::chrono::milliseconds backoff_initial{50};
  std::chrono::milliseconds backoff_max{2000};
  // Heartbeat: while this client holds a lease or has an acquire waiting at the daemon, a
  // connection that brought nothing for this long gets a ping, and one that brings nothing
  // for this long again is taken for dead (a crashed host, a dropped NAT flow: TCP would take
  // hours to tell): its leases are lost and its waiting acquires sent again on the next
  // connection, as for any dropped connection. So a dead connection is noticed within two
  // intervals. Zero: no heartbeat.
  std::chrono::milliseconds health_check_interval{5000};
  // How long the thread that reads an answer polls the socket without sleeping before it
  // sleeps, yielding the CPU between polls (so a daemon on the same core runs). An answer that
  // comes within it is read without the thread being put to sleep and woken again, which on a
  // VM costs about as much as the daemon's work. A blocking call polls in its own thread before
  // it blocks in poll(2). An asynchronous operation's reader (the I/O thread, or the thread
  // running your io_context for Client(io, options)) queues a handler that yields and reads
  // and queues itself again, instead of sleeping in epoll_wait: your other handlers and I/O
  // run between its turns. It spins only while a moving average of recent answers is within
  // this bound, so a daemon across a network or a held lock costs no spinning. Zero: never
  // spin (and set it to zero when the client shares a core with its daemon).
  std::chrono::microseconds spin{50};
};

// Why a lease stopped being valid, as told to on_lost.
enum class lost_reason : std::uint8_t {
  expired,          // the daemon's `expired` event, or no renewal confirmed within the ttl
  not_held,         // the daemon refused a renewal or extend (`not_held`)
  connection_lost,  // the connection dropped: the daemon released every lease it held
  client_closed,    // the Client was destroyed while the lease lived
};

std::string_view to_string(lost_reason reason) noexcept;

// What on_lost is told.
struct lease_lost {
  std::string key;                // the lease's first key
  std::vector<std::string> keys;  // every key of the lease (one for a single-key lease)
  std::uint64_t token = 0;
  lost_reason reason = lost_reason::expired;
  std::string message;  // for people: what happened
};

// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
struct AcquireOptions {
  // The lease runs out this long after its grant or its last renewal (1 ms .. the daemon's
  // max_ttl_ms, default 1 h).
  std::chrono::milliseconds ttl{30000};
  // How long to wait for the key. nullopt: until granted. 0: try once.
  std::optional<std::chrono::milliseconds> wait;
  // How many may hold the key at once (1 = mutex, N = counting semaphore). Every acquire of a
  // live key must name the same limit, else Conflict.
  std::uint32_t limit = 1;
  // exclusive (the default) or shared: shared holders of a key coexist, an exclusive holder
  // excludes everyone (a read-write lock). Shared needs limit 1 (else ProtocolError). Waiters
  // stay FIFO: a shared acquire queues behind a waiting exclusive one, so writers never starve.
  lock_mode mode = lock_mode::exclusive;
  // Opt-in reentrancy. When set, an acquire of keys that the calling thread already holds
  // through this Client by an earlier reentrant acquire returns that same lease (Lease::depth()
  // counts the holds) without asking the daemon; the lease is released when its last holder
  // releases it (with nested scopes, the outermost), and is renewed until then. The nested
  // acquire must name the same mode and exactly the same set of keys (a single key is a set of
  // one); the other mode, or a set that overlaps a held one without being equal, throws
  // ReentrancyError. Its ttl, wait, limit, auto_extend and on_lost are not used: the held lease
  // keeps its own. If the held lease was lost, the nested acquire throws NotHeld.
  // Not covered: other threads (they queue as usual), other Clients and processes, and holds
  // taken without `reentrant` (a reentrant acquire of such a key queues behind it, as on the
  // wire). A Lease moved to another thread stays registered with the thread that acquired it.
  bool reentrant = false;
  // Renew the lease at ttl/3 while it lives.
  bool auto_extend = true;
  // Called once, on the I/O thread, if the lease is lost (see the header comment). Must not
  // block. Not called when the lease is released by release() or its destructor.
  std::function<void(const lease_lost&)> on_lost;
  // Cancels the acquire from another thread: once stop is requested, a waiting acquire (and
  // with_lock) throws Cancelled, after withdrawing the request on the daemon; a grant that
  // crosses the cancel is released at once, so no lease is left that no Lease owns. Requested
  // before the call, the acquire throws Cancelled without waiting. A default token never stops.
  std::stop_token stop;
};

// What `inspect` reports about a key.
struct key_info {
  bool held = false;
  std::vector<holder_info> holders;  // in grant order
  std::uint64_t waiters = 0;
  std::uint64_t limit = 0;  // 0 when the key is not live
  // Cluster mode only: the node holding the key's global right, and the daemons waiting for it.
  std::optional<cluster_view> cluster;
};

// What `top` reports: the stats, the longest queues and the oldest leases (PROTOCOL.md).
struct top_info {
  stats_info stats;
  std::vector<queue_info> queues;  // most waiters first
  std::vector<lease_info> oldest;  // longest held first
};

namespace detail {
class client_impl;
struct lease_state;
}  // namespace detail

// ---------------------------------------------------------------------------------------------

// How Lease::release waits for the daemon.
enum class release_mode : std::uint8_t {
  // Wait for the daemon's answer (one round trip, bounded by request_timeout).
  confirmed,
  // Send `release` with `noreply` (PROTOCOL.md) and return once it is queued on the connection:
  // no round trip. Later requests of the same Client reach the daemon after it; another
  // connection may still see the key held for a moment. Losses the client has not seen (a
  // release the daemon would answer `not_held`) go unreported.
  no_reply,
};

// A granted lock: move-only RAII. The destructor releases it with release_mode::no_reply
// (errors are swallowed). A default-constructed or moved-from Lease is empty: not valid,
// token 0, and release() does nothing.
//
// One Lease object is used by one thread at a time; valid() may be called from any thread.
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class Lease {
 public:
  Lease() noexcept;
  Lease(Lease&& other) noexcept;
  // Releases the lease this one held (as the destructor does), then takes `other`'s.
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  // The key (for a lease over several keys, the first one as given to acquire_all); empty for
  // an empty Lease.
  const std::string& key() const noexcept;
  // Every key of the lease, in the order given to acquire/acquire_all (one for acquire());
  // empty for an empty Lease.
  const std::vector<std::string>& keys() const noexcept;
  // The mode the lease holds its keys in. exclusive for an empty Lease.
  lock_mode mode() const noexcept;
  // How many holders share this lease through reentrant acquires (AcquireOptions::reentrant):
  // 1 for a lease held once, N while N nested holds are open; 0 for an empty Lease.
  int depth() const noexcept;
  // The fencing token of the grant: strictly greater than every token the daemon granted
  // before. Pass it to storage so that it can refuse writes from an older holder. 0 if empty.
  std::uint64_t token() const noexcept;
  // True while the lease is held: granted, not released, not lost. A lost lease never becomes
  // valid again.
  bool valid() const noexcept;
  // Asks the daemon (one round trip) whether it still holds this lease: its key has a holder
  // with this token. valid() is this process's view; owned() catches a lease ended elsewhere
  // (for example by an operator's `keylock release`) before its next renewal notices. False for
  // an empty Lease. Throws ConnectionError if the daemon did not answer.
  bool owned() const;

  // Sets the lease to run out `ttl` from now (and makes `ttl` the ttl of later auto renewals).
  // Throws NotHeld if the lease is not held (then it is invalid and on_lost has run; also when
  // the connection drops with the extend in flight: the daemon drops the lease with it),
  // ConnectionError if no reply came within request_timeout, std::logic_error on an empty
  // Lease or from the I/O thread.
  // Any other refusal (ProtocolError for a ttl above the daemon's max_ttl_ms, Denied, Error for
  // `unavailable`) leaves the lease held and valid, renewed with its earlier ttl. A renewal the
  // daemon refuses with such an error ends the lease on the daemon too (it is released, then
  // lost here with lost_reason::expired): no lease stays held that this process stopped renewing.
  void extend(std::chrono::milliseconds ttl);
  // The same without exceptions: `ec` says what extend() would have thrown (cleared on success).
  void extend(std::chrono::milliseconds ttl, std::error_code& ec);

  // For a reentrant lease with other holders open (depth() > 1): ends this hold only and
  // returns (throwing NotHeld if the lease was lost meanwhile); the lease stays held and
  // renewed for the others. Otherwise:
  // Ends the lease and stops its renewal; after it returns no renewal is sent. Does nothing on
  // an empty or already released Lease. Throws NotHeld if the lease had been lost (expired,
  // renewal refused, connection dropped; with `confirmed`, also when the daemon answers
  // not_held) — the caller ran without the lock for a while — and, with `confirmed`,
  // ConnectionError if the daemon did not confirm within request_timeout (the lease then runs
  // out by its ttl). Either way the Lease is empty afterwards. A connection that drops while the
  // release is in flight counts as released (the daemon drops a closed connection's leases).
  void release(release_mode mode = release_mode::confirmed);
  // The same without exceptions: `ec` says what release() would have thrown.
  void release(release_mode mode, std::error_code& ec);

  // The non-blocking release and extend behind async_release and async_extend
  // (keylock/async.hpp): they return at once, and `done` runs once, with a null exception_ptr
  // or with what release()/extend() would have thrown, on the client's I/O thread (or on this
  // thread when the outcome is known without the daemon: an empty, released or lost lease, a
  // reentrant hold left open for others). `done` must not block. start_release empties the
  // Lease at once, as release() does.
  void start_release(release_mode mode, std::function<void(std::exception_ptr)> done);
  void start_extend(std::chrono::milliseconds ttl, std::function<void(std::exception_ptr)> done);

 private:
  friend class Client;
  friend class detail::client_impl;
  Lease(std::shared_ptr<detail::client_impl> client, std::shared_ptr<detail::lease_state> state);
  void release_quietly() noexcept;

  std::shared_ptr<detail::client_impl> client_;
  std::shared_ptr<detail::lease_state> state_;
};

// ---------------------------------------------------------------------------------------------

// A connection to keylockd shared by any number of threads. Not copyable or movable (hold it
// by reference, or in a std::optional / std::unique_ptr).
// NOLINTNEXTLINE(readability-identifier-naming): public name fixed by issue 3
class Client {
 public:
  // Connects (resolve, TCP connect, TLS handshake when options.tls says so, `hello` with the user,
  // secret and name) and returns once a daemon has answered: the first of options.server's list
  // that does, tried in order, each once. Throws std::invalid_argument for a malformed server
  // address or list (an empty element, a bad port), or a TLS file that cannot be loaded. When no
  // server answers it throws, with every server's failure in the message: AuthError if one refused
  // the user or secret, else ProtocolError if one did not speak the protocol, else ConnectionError
  // (none reachable within connect_timeout; a failed TLS handshake, such as a certificate that the
  // CA file does not vouch for or that names another host, is one: its message says "TLS" and
  // OpenSSL's reason).
  explicit Client(client_options options = {});
  // A client with no thread of its own: its I/O runs on `io`, like any Asio object's (`io`
  // may be run by any number of threads). For asynchronous code
  // (keylock/async.hpp): an operation whose handler runs on `io` completes with no thread
  // hop. The constructor does not wait for the connection (it may run before `io` does): it
  // starts connecting and returns, and calls wait for the connection as they do during a
  // reconnect. When no daemon answers within connect_timeout, acquires fail with
  // ConnectionError, whose message says why (a refused secret, say). Nothing
  // completes unless `io` runs. `io` must outlive the Client and its Leases. Blocking calls
  // (acquire, Lease::extend, ping, ...) are refused with std::logic_error from a thread that
  // is running `io` — they would wait for the thread they block; Lease::release there does
  // not wait (release_mode::no_reply). Destroying the Client returns at once; the connection
  // closes on `io`.
  Client(boost::asio::io_context& io, client_options options = {});
  // Closes the connection (the daemon releases every lease and drops every waiting acquire of
  // it) and stops the I/O thread. Calls still blocked in other threads fail with
  // ConnectionError; leases still alive become invalid (reason client_closed). Must not be
  // called from an on_lost callback.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&&) = delete;
  Client& operator=(Client&&) = delete;

  // Acquires `key` ("1..max_key_bytes bytes of UTF-8"), waiting up to options.wait (forever
  // when unset; waiters are granted in FIFO order). Returns the lease, already being renewed
  // when options.auto_extend. Throws Timeout when the key stayed busy for the whole wait,
  // Conflict on a limit mismatch, LimitExceeded, ProtocolError for an invalid key/ttl/limit,
  // AuthError, Denied (the user may not lock `key`), Cancelled (options.stop), and
  // ConnectionError on an outage (the README's rule:
  // a wait that ends while disconnected, or no daemon reachable for connect_timeout; a waiting
  // acquire survives shorter reconnects) or when the Client is closed.
  Lease acquire(std::string_view key, const AcquireOptions& options = {});
  // The same without exceptions: the lease, or nullopt with `ec` set (client_errc::timeout when
  // the key was busy; see client_errc). `ec` is cleared on success.
  std::optional<Lease> acquire(std::string_view key, const AcquireOptions& options,
                               std::error_code& ec);
  std::optional<Lease> acquire_all(const std::vector<std::string>& keys,
                                   const AcquireOptions& options, std::error_code& ec);

  // As acquire(), but returns nullopt instead of throwing Timeout. An unset options.wait means
  // "try once" (wait 0) here, not "forever".
  std::optional<Lease> try_acquire(std::string_view key, AcquireOptions options = {});

  // Acquires every key of `keys` at once, or none: one Lease over the whole set (one token, one
  // ttl; renewed, extended, released and lost whole). 1 to 64 distinct keys. The request waits
  // in every key's queue from the same instant, so two acquire_all calls over overlapping sets
  // never deadlock, in any order. Throws what acquire() throws; ProtocolError for an empty set,
  // more than 64 keys or a key given twice; ReentrancyError as AcquireOptions::reentrant says.
  Lease acquire_all(const std::vector<std::string>& keys, const AcquireOptions& options = {});
  // As acquire_all(), but returns nullopt instead of throwing Timeout (unset wait: try once).
  std::optional<Lease> try_acquire_all(const std::vector<std::string>& keys,
                                       AcquireOptions options = {});

  // Acquires `key`, runs fn, releases, and returns fn's result. fn is called as fn(lease) when
  // it accepts a `const Lease&`, else as fn(). The release is release_mode::no_reply: it costs
  // no round trip, and this Client's later requests reach the daemon after it. When fn throws,
  // the lease is released (errors of the release are swallowed) and fn's exception propagates.
  // Throws what acquire() throws, and NotHeld if the client saw the lease lost while fn ran
  // (fn's result is then discarded: whatever fn did, it did without the lock for a while;
  // options.on_lost has been called too).
  // Shared mode and reentrancy are AcquireOptions fields (mode, reentrant).
  template <class Fn>
  decltype(auto) with_lock(std::string_view key, Fn&& fn, const AcquireOptions& options = {});

  // with_lock holding `key` in shared mode (options.mode is overridden): for readers. Throws
  // what with_lock throws.
  template <class Fn>
  decltype(auto) with_shared_lock(std::string_view key, Fn&& fn, AcquireOptions options = {});

  // with_lock over several keys: acquire_all(keys, options), fn, release. Throws what
  // acquire_all() throws, and NotHeld as with_lock.
  template <class Fn>
  decltype(auto) with_lock_all(const std::vector<std::string>& keys, Fn&& fn,
                               const AcquireOptions& options = {});

  // The non-blocking acquire behind async_acquire and async_acquire_all (keylock/async.hpp):
  // returns at once, and `done` runs once, on the client's I/O thread, with the granted lease
  // and a null exception_ptr, or with what acquire()/acquire_all() would have thrown and an
  // empty Lease. `done` must not block (async_acquire passes the outcome to the handler's
  // executor). options.stop cancels it; options.reentrant is refused (std::invalid_argument).
  void start_acquire(std::vector<std::string> keys, bool as_set, AcquireOptions options,
                     std::function<void(std::exception_ptr, Lease)> done);

  // Round trip of one `ping`, measured on the I/O thread from write to reply. Throws
  // ConnectionError.
  std::chrono::nanoseconds ping();
  // The holders, waiters and limit of `key`. Throws ConnectionError, ProtocolError, Denied
  // (the user may not inspect `key`).
  key_info inspect(std::string_view key);
  // Whether anyone holds `key` now (one round trip; inspect(key).held).
  bool locked(std::string_view key);
  // Ends the lease `token` on `key`, whoever holds it: an operator's force release (the CLI's
  // `keylock release KEY TOKEN`). Any connection that knows key and token may release. The
  // holder's process learns at its next renewal, which the daemon answers not_held. Throws
  // NotHeld when `key` has no live lease with that token, Denied when the user may not.
  void release(std::string_view key, std::uint64_t token);
  // The daemon's gauges and counters. Throws ConnectionError, Denied (the user lacks admin).
  stats_info stats();
  // The stats plus up to `n` (1..100) longest queues and oldest leases. Throws
  // ConnectionError, ProtocolError (n out of range), Denied (the user lacks admin).
  top_info top(std::size_t n = 10);

  // The address of the daemon this client uses, as configured ("host:port"): the one whose
  // connection is up, or was last up while the client reconnects. With one server, that one.
  // The reference stays valid for the Client's life; may be called from any thread.
  const std::string& server() const noexcept;
  // Every configured server address, in the order they are tried (one element without a list).
  const std::vector<std::string>& servers() const noexcept;
  // The daemon version announced in the last successful `hello` ("0.1.0").
  std::string server_version() const;

 private:
  // Runs fn under `lease` and releases it (with_lock's and with_lock_all's body).
  template <class Fn>
  static decltype(auto) run_locked(Lease& lease, Fn& fn);

  std::shared_ptr<detail::client_impl> impl_;
};

template <class Fn>
decltype(auto) Client::with_lock(std::string_view key, Fn&& fn, const AcquireOptions& options) {
  Lease lease = acquire(key, options);
  return run_locked(lease, fn);
}

template <class Fn>
decltype(auto) Client::with_shared_lock(std::string_view key, Fn&& fn, AcquireOptions options) {
  options.mode = lock_mode::shared;
  Lease lease = acquire(key, options);
  return run_locked(lease, fn);
}

template <class Fn>
decltype(auto) Client::with_lock_all(const std::vector<std::string>& keys, Fn&& fn,
                                     const AcquireOptions& options) {
  Lease lease = acquire_all(keys, options);
  return run_locked(lease, fn);
}

template <class Fn>
decltype(auto) Client::run_locked(Lease& lease, Fn& fn) {
  constexpr bool takes_lease = std::is_invocable_v<Fn&, const Lease&>;
  using result = std::conditional_t<takes_lease, std::invoke_result<Fn&, const Lease&>,
                                    std::invoke_result<Fn&>>;
  using result_t = typename result::type;

  // On an exception from fn the Lease destructor releases quietly; on success release() may
  // throw NotHeld, which is the point: the caller learns that the lock was lost.
  constexpr release_mode mode = release_mode::no_reply;
  auto call = [&]() -> result_t {
    if constexpr (takes_lease) {
      return std::invoke(fn, std::as_const(lease));
    } else {
      return std::invoke(fn);
    }
  };
  if constexpr (std::is_void_v<result_t>) {
    call();
    lease.release(mode);
  } else {
    result_t value = call();
    lease.release(mode);
    if constexpr (std::is_reference_v<result_t>) {
      return static_cast<result_t>(value);
    } else {
      return value;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decorators.

namespace detail {
template <class T>
concept streamable = requires(std::ostream& out, const T& value) {
  out << value;
};
// Tells lock_decorator's two forms apart: a name is string-like, a function is not.
template <class T>
concept not_a_name = !std::convertible_to<T, std::string_view>;
}  // namespace detail

namespace detail {
// One argument of default_key, the same in every process and under every locale: numbers
// through std::to_chars (integers exactly, floating point as the shortest text that reads back
// to the same value), bool as true/false, strings as they are, anything else through
// operator<< on a stream with the classic locale.
template <class T>
void append_key_part(std::string& out, const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    out += value ? "true" : "false";
  } else if constexpr (std::is_same_v<T, char>) {
    out += value;
  } else if constexpr (std::is_arithmetic_v<T>) {
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
    out.append(buf, ec == std::errc{} ? end : buf);
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out += std::string_view(value);
  } else {
    std::ostringstream text;
    text.imbue(std::locale::classic());
    text << std::boolalpha << value;
    out += std::move(text).str();
  }
}
}  // namespace detail

// The key the named lock_decorator uses: `name`, then ":" and each argument, in order.
// default_key("fetch", "alpha", 3) is "fetch:alpha:3". Equal arguments give the same key in
// every process, whatever the locale: numbers are written exactly (std::to_chars: 3000 is
// "3000", 0.1 + 0.2 is "0.30000000000000004"), bool as true/false, other types through
// operator<< with the classic locale. Arguments that contain ':' can make two calls share a
// key; pass a key_maker when that matters.
template <class... Args>
std::string default_key(std::string_view name, const Args&... args) {
  static_assert((detail::streamable<Args> && ...),
                "keylock::default_key: every argument must support operator<<; "
                "pass a key_maker to lock_decorator instead");
  std::string out(name);
  ((out += ':', detail::append_key_part(out, args)), ...);
  return out;
}

// A callable that runs Fn under client.with_lock(key_maker(args...), ...), or under
// client.with_lock_all(...) when the key_maker returns several keys (a range of strings, such as
// std::vector<std::string>). Made by lock_decorator. Holds a pointer to the Client, which must
// outlive it.
template <class Fn, class KeyMaker>
class locked_function {
 public:
  locked_function(Client& client, Fn fn, KeyMaker key_maker, AcquireOptions options)
      : client_(&client),
        fn_(std::move(fn)),
        key_maker_(std::move(key_maker)),
        options_(std::move(options)) {}

  // Calls fn(args...) holding the lock on key_maker(args...) (the key_maker sees the arguments
  // as const lvalues). Returns fn's result; throws what Client::with_lock throws.
  template <class... Args>
  requires std::invocable<Fn&, Args...>
  decltype(auto) operator()(Args&&... args) {
    return invoke_locked(fn_, std::forward<Args>(args)...);
  }
  template <class... Args>
  requires std::invocable<const Fn&, Args...>
  decltype(auto) operator()(Args&&... args) const {
    return invoke_locked(fn_, std::forward<Args>(args)...);
  }

 private:
  template <class F, class... Args>
  decltype(auto) invoke_locked(F& fn, Args&&... args) const {
    auto keys = std::invoke(key_maker_, std::as_const(args)...);
    auto call = [&]() -> decltype(auto) { return std::invoke(fn, std::forward<Args>(args)...); };
    if constexpr (std::is_convertible_v<const decltype(keys)&, std::string>) {
      return client_->with_lock(std::string(keys), call, options_);
    } else {
      return client_->with_lock_all(std::vector<std::string>(std::begin(keys), std::end(keys)),
                                    call, options_);
    }
  }

  Client* client_;
  Fn fn_;
  KeyMaker key_maker_;
  AcquireOptions options_;
};

// Wraps fn so that every call runs under the lock whose key key_maker(args...) returns (a
// std::string, or anything convertible to one), or under all the keys it returns at once (a
// std::vector<std::string> or another range of strings: with_lock_all). A key_maker that
// ignores its arguments and returns one key runs fn one call at a time across every process
// using the daemon. options.mode and options.reentrant apply to every call: with
// {.reentrant = true}, a decorated function that calls itself (or another function decorated
// with the same key) through the same Client on the same thread runs the inner call at once
// under the outer call's lease.
template <detail::not_a_name Fn, class KeyMaker>
auto lock_decorator(Client& client, Fn fn, KeyMaker key_maker, AcquireOptions options = {}) {
  return locked_function<Fn, KeyMaker>(client, std::move(fn), std::move(key_maker),
                                       std::move(options));
}

// Wraps fn so that every call runs under the lock default_key(name, args...):
// lock_decorator(client, "fetch_remote_thing", fetch)("alpha") locks "fetch_remote_thing:alpha".
template <class Fn>
auto lock_decorator(Client& client, std::string name, Fn fn, AcquireOptions options = {}) {
  auto key_maker = [name = std::move(name)](const auto&... args) {
    return default_key(name, args...);
  };
  return locked_function<Fn, decltype(key_maker)>(client, std::move(fn), std::move(key_maker),
                                                  std::move(options));
}

}  // namespace keylock
