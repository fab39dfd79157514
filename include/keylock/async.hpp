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
// chooses one for a callback; without one, Asio's system executor), never inside the
// initiating call, and the operation keeps that executor's work alive until then.
//
// Where the time goes: with a Client of its own I/O thread, each completion is posted from
// that thread to the handler's executor, one thread wake per operation. With a Client on the
// handler's io_context (Client(io, options)), the reply is read on the thread that runs that
// io_context, and the handler runs right there, at once (dispatch), when the operation
// completes after its initiation: no queueing and no wake. While the answer is due within
// client_options::spin, that thread polls for it between your handlers rather than sleeping
// in epoll_wait (see `spin`), so an operation costs what a blocking call does.
//
// Lifetimes: an io_context that a Client with its own I/O thread completes operations on must
// outlive that Client, as with any object that posts to it: declare the io_context first. The
// I/O thread may still be returning from its post to the io_context when the handler has
// already run there, so destroying the io_context after the last handler is not enough.
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
// The operation is Client::start_acquire, the same request the blocking acquire sends.
#pragma once

// clang-format off
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it
// clang-format on

#include "keylock/client.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/require.hpp>
#include <boost/asio/strand.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace keylock {

namespace detail {

// Queues `fn` on `ex`, never running it inside this call, as the continuation of what runs
// now: from a thread that is running ex's io_context, Asio queues it on that thread without a
// lock or a wake of the reactor. A legacy (Networking TS) executor gets a plain post.
template <class Executor, class Fn>
void post_continuation(const Executor& ex, Fn&& fn) {
  namespace execution = boost::asio::execution;
  if constexpr (execution::is_executor<Executor>::value) {
    execution::execute(boost::asio::prefer(boost::asio::require(ex, execution::blocking.never),
                                           execution::relationship.continuation),
                       std::forward<Fn>(fn));
  } else {
    boost::asio::post(ex, std::forward<Fn>(fn));
  }
}

// How many operations this thread is initiating (inside start_async's `start`): an outcome
// known during initiation is posted, never handed to the handler inside the initiating call.
inline thread_local int initiating = 0;

// Whether a handler for `ex` may run in this thread now (by dispatch): `ex` is an
// io_context's executor and this thread runs that io_context, or a strand of one that this
// thread is inside; also behind Asio's type-erased any_io_executor (use_awaitable's). False for
// other executors (the system executor's, a thread pool's): their handlers are posted.
template <class Executor>
bool runs_here(const Executor& ex) {
  using io_executor = boost::asio::io_context::executor_type;
  if constexpr (requires { ex.running_in_this_thread(); }) {
    return ex.running_in_this_thread();
  } else if constexpr (requires { ex.template target<io_executor>(); }) {
    if (const auto* io = ex.template target<io_executor>()) return io->running_in_this_thread();
    if (const auto* strand = ex.template target<boost::asio::strand<io_executor>>()) {
      return strand->running_in_this_thread();
    }
  }
  return false;
}

// Runs an operation and delivers its outcome to `handler` on the handler's executor.
// `start(done)` begins it; `done(args...)`, called once on any thread (the client's I/O
// thread, or a thread running the user's io_context for a Client on it), passes the outcome
// on: at once when that thread runs the handler's io_context and the operation has been
// initiated (a Client on the io_context of a coroutine: no queueing at all), else queued.
template <class Handler, class Start>
void start_async(Start start, Handler handler) {
  auto executor = boost::asio::get_associated_executor(handler);
  // Held until the handler has run. `done` carries only a pointer to it, so that the
  // std::function holding `done` needs no allocation of its own; `done` runs exactly once and
  // owns it from then on. (Should `start` throw before it takes `done`, the operation leaks
  // rather than risk being freed twice.)
  struct operation {
    Handler handler;
    boost::asio::executor_work_guard<decltype(executor)> work;
  };
  auto* op = new operation{std::move(handler), boost::asio::make_work_guard(executor)};
  struct initiation {  // counts this thread's initiations for the duration
    initiation() { ++initiating; }
    ~initiation() { --initiating; }
    initiation(const initiation&) = delete;
    initiation& operator=(const initiation&) = delete;
  } during;
  start([op](auto... outcome) {
    std::unique_ptr<operation> own(op);
    auto ex = own->work.get_executor();
    const bool now = initiating == 0 && runs_here(ex);
    auto complete = [own = std::move(own), ... outcome = std::move(outcome)]() mutable {
      Handler h = std::move(own->handler);
      own->work.reset();
      own.reset();
      std::move(h)(std::move(outcome)...);
    };
    if (now) {
      boost::asio::dispatch(ex, std::move(complete));
    } else {
      post_continuation(ex, std::move(complete));
    }
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
