// Asio completion-token API of the keylock client (issue 14): callbacks, use_awaitable,
// use_future, on the caller's executor.
//
//   #include <keylock/async.hpp>      // Boost.Asio; keylock/client.hpp stays Asio-free
//
//   keylock::async_acquire(client, "report:monthly", options,
//       [](std::exception_ptr error, keylock::Lease lease) { ... });
//   keylock::Lease lease = co_await keylock::async_acquire(client, "k", {},
//                                                          boost::asio::use_awaitable);
//   std::future<keylock::Lease> f = keylock::async_acquire(client, "k", {},
//                                                          boost::asio::use_future);
//
// The completion signature is void(std::exception_ptr, Lease): the exception is what
// Client::acquire would have thrown (Timeout, ConnectionError, Cancelled, ...), so co_await and
// future::get() rethrow it with its type, and a callback may rethrow it or look at it. The
// handler runs on its associated executor (the coroutine's for use_awaitable; bind_executor
// chooses one for a callback; without one, Asio's system executor), never on the client's
// I/O thread, and the operation keeps that executor's work alive until then.
//
// Cancelling a pending operation: Debian's Boost 1.74 (Asio 1.18) has no per-operation
// cancellation slots, so the operation takes a std::stop_token in AcquireOptions::stop;
// requesting stop completes it with Cancelled after withdrawing the acquire on the daemon (a
// grant that crossed the cancel is released at once). When Asio's cancellation slots are
// available, a slot handler can request that same stop.
//
// GCC 12 may warn "'completion' may be used uninitialized" inside Asio 1.18's use_future.hpp
// when it inlines use_future at -O1 with sanitizers: a false positive in Boost's header
// (-Wno-maybe-uninitialized for that file).
//
// The operation is Client::start_acquire, the same request the blocking acquire sends: it
// costs no more than a blocking call (the handler is posted instead of a thread woken).
#pragma once

// clang-format off
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it
// clang-format on

#include "keylock/client.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace keylock {

namespace detail {

// Runs an operation and delivers its outcome to `handler` on the handler's executor.
// `start(done)` begins it; `done(args...)`, called once on any thread (the client's I/O
// thread), passes the outcome on.
template <class Handler, class Start>
void start_async(Start start, Handler handler) {
  auto executor = boost::asio::get_associated_executor(handler);
  // Held until the handler has run: std::function needs a copyable callable, the handler
  // (a coroutine's, a promise's) is move-only.
  struct operation {
    Handler handler;
    boost::asio::executor_work_guard<decltype(executor)> work;
  };
  auto op = std::make_shared<operation>(
      operation{std::move(handler), boost::asio::make_work_guard(executor)});
  start([op](auto... outcome) {
    auto ex = op->work.get_executor();
    boost::asio::post(ex, [op, ... outcome = std::move(outcome)]() mutable {
      Handler h = std::move(op->handler);
      op->work.reset();
      std::move(h)(std::move(outcome)...);
    });
  });
}

template <class Handler>
void start_async_acquire(Client& client, std::vector<std::string> keys, bool as_set,
                         AcquireOptions options, Handler handler) {
  start_async(
      [&client, keys = std::move(keys), as_set, options = std::move(options)](auto done) mutable {
        client.start_acquire(std::move(keys), as_set, std::move(options), std::move(done));
      },
      std::move(handler));
}

// The asynchronous operation over `start` (as start_async's), completing with an
// exception_ptr only, for `token`.
template <class Start, class CompletionToken>
auto async_void(Start start, CompletionToken&& token) {
  return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
      [start = std::move(start)](auto handler) mutable {
        start_async(std::move(start), std::move(handler));
      },
      token);
}

}  // namespace detail

// Releases `lease` as Lease::release(mode) does, completing with (exception_ptr): null, or
// what release() would have thrown. The Lease is empty from the call on.
template <class CompletionToken>
auto async_release(Lease& lease, release_mode mode, CompletionToken&& token) {
  return detail::async_void(
      [&lease, mode](std::function<void(std::exception_ptr)> done) {
        lease.start_release(mode, std::move(done));
      },
      std::forward<CompletionToken>(token));
}

// Extends `lease` as Lease::extend(ttl) does, completing with (exception_ptr). The Lease must
// outlive the initiation only (the operation keeps what it needs).
template <class CompletionToken>
auto async_extend(Lease& lease, std::chrono::milliseconds ttl, CompletionToken&& token) {
  return detail::async_void(
      [&lease, ttl](std::function<void(std::exception_ptr)> done) {
        lease.start_extend(ttl, std::move(done));
      },
      std::forward<CompletionToken>(token));
}

// Acquires `key` as Client::acquire does, completing with (exception_ptr, Lease).
template <class CompletionToken>
auto async_acquire(Client& client, std::string key, AcquireOptions options,
                   CompletionToken&& token) {
  return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, Lease)>(
      [&client](auto handler, std::string k, AcquireOptions o) {
        detail::start_async_acquire(client, std::vector<std::string>{std::move(k)}, false,
                                    std::move(o), std::move(handler));
      },
      token, std::move(key), std::move(options));
}

// Acquires every key of `keys` at once, as Client::acquire_all does.
template <class CompletionToken>
auto async_acquire_all(Client& client, std::vector<std::string> keys, AcquireOptions options,
                       CompletionToken&& token) {
  return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, Lease)>(
      [&client](auto handler, std::vector<std::string> ks, AcquireOptions o) {
        detail::start_async_acquire(client, std::move(ks), true, std::move(o),
                                    std::move(handler));
      },
      token, std::move(keys), std::move(options));
}

}  // namespace keylock
