// etcd_client.hpp over the generated gRPC stubs (synchronous API). The one TU of keylock that
// includes gRPC headers.
#include "cluster/etcd_client.hpp"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace keylock {

namespace {

namespace pb = etcdserverpb;

// "http://127.0.0.1:2379" -> "127.0.0.1:2379"; a bare HOST:PORT passes unchanged.
std::string strip_scheme(const std::string& endpoint) {
  for (const char* scheme : {"http://", "https://"}) {
    if (endpoint.rfind(scheme, 0) == 0) return endpoint.substr(std::string(scheme).size());
  }
  return endpoint;
}

// The gRPC target over every member: "ipv4:a:1,b:2" lets gRPC move between them (IPv4
// addresses); a single name goes through DNS.
std::string target_of(const std::vector<std::string>& endpoints) {
  if (endpoints.size() == 1) return strip_scheme(endpoints[0]);
  std::string target = "ipv4:";
  for (std::size_t i = 0; i < endpoints.size(); ++i) {
    if (i > 0) target += ',';
    target += strip_scheme(endpoints[i]);
  }
  return target;
}

etcd_status from_grpc(const grpc::Status& s) {
  if (s.ok()) return etcd_status::success();
  etcd_status out;
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
      out.what = etcd_status::code::unavailable;
      break;
    default:
      out.what = etcd_status::code::failed;
      break;
  }
  out.message = "etcd: " + s.error_message();
  return out;
}

etcd_status failed(std::string message) {
  etcd_status out;
  out.what = etcd_status::code::failed;
  out.message = std::move(message);
  return out;
}

// The end of the range of every key starting with `prefix` (etcd's clientv3.GetPrefixRangeEnd).
std::string prefix_end(const std::string& prefix) {
  std::string end = prefix;
  for (std::size_t i = end.size(); i > 0; --i) {
    auto c = static_cast<unsigned char>(end[i - 1]);
    if (c < 0xff) {
      end[i - 1] = static_cast<char>(c + 1);
      end.resize(i);
      return end;
    }
  }
  return std::string(1, '\0');  // every key
}

}  // namespace

struct etcd_client::impl {
  etcd_options options;
  std::mutex watch_mutex;
  grpc::ClientContext* watch_ctx = nullptr;  // the running watch_prefix's, under watch_mutex
  bool watch_cancelled = false;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;
  std::unique_ptr<pb::Auth::Stub> auth;
  std::mutex token_mutex;
  std::string token;  // etcd auth token, when options.user is set

  void deadline(grpc::ClientContext& ctx, std::chrono::milliseconds timeout) {
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    ctx.set_wait_for_ready(true);  // ride out a member's restart within the deadline
    if (options.user.empty()) return;
    std::string t = current_token();
    if (!t.empty()) ctx.AddMetadata("token", t);
  }

  // The auth token, authenticating first when there is none (empty when that failed: the call
  // then fails with etcd's own error).
  std::string current_token() {
    std::lock_guard<std::mutex> lock(token_mutex);
    if (!token.empty()) return token;
    pb::AuthenticateRequest req;
    req.set_name(options.user);
    req.set_password(options.password);
    pb::AuthenticateResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + options.rpc_timeout);
    if (auth->Authenticate(&ctx, req, &resp).ok()) token = resp.token();
    return token;
  }

  // A unary call's outcome. After a failure, a token etcd no longer accepts is dropped, so the
  // next call authenticates again.
  etcd_status finish(const grpc::Status& s) {
    if (!options.user.empty() && !s.ok() &&
        (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         s.error_message().find("token") != std::string::npos)) {
      std::lock_guard<std::mutex> lock(token_mutex);
      token.clear();
    }
    return from_grpc(s);
  }
  void deadline(grpc::ClientContext& ctx) { deadline(ctx, options.rpc_timeout); }
};

etcd_client::etcd_client(etcd_options options) : impl_(std::make_unique<impl>()) {
  impl_->options = std::move(options);
  if (impl_->options.endpoints.empty()) return;
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("round_robin");
  bool tls = !impl_->options.ca_pem.empty() || !impl_->options.cert_pem.empty();
  for (const std::string& ep : impl_->options.endpoints) tls = tls || ep.rfind("https://", 0) == 0;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = impl_->options.ca_pem;
    ssl.pem_cert_chain = impl_->options.cert_pem;
    ssl.pem_private_key = impl_->options.key_pem;
    creds = grpc::SslCredentials(ssl);
  }
  impl_->channel =
      grpc::CreateCustomChannel(target_of(impl_->options.endpoints), creds, args);
  impl_->auth = pb::Auth::NewStub(impl_->channel);
  impl_->kv = pb::KV::NewStub(impl_->channel);
  impl_->lease = pb::Lease::NewStub(impl_->channel);
  impl_->watch = pb::Watch::NewStub(impl_->channel);
}

etcd_client::~etcd_client() = default;
etcd_client::etcd_client(etcd_client&&) noexcept = default;
etcd_client& etcd_client::operator=(etcd_client&&) noexcept = default;

etcd_status etcd_client::lease_grant(std::chrono::seconds ttl, std::int64_t* id,
                                     std::int64_t* granted_ttl) {
  if (!impl_->lease) return failed("no etcd endpoints");
  pb::LeaseGrantRequest req;
  req.set_ttl(ttl.count());
  pb::LeaseGrantResponse resp;
  grpc::ClientContext ctx;
  impl_->deadline(ctx);
  grpc::Status gs = impl_->lease->LeaseGrant(&ctx, req, &resp);
  etcd_status st = impl_->finish(gs);
  if (!st.ok()) return st;
  if (!resp.error().empty()) return failed("etcd: " + resp.error());
  *id = resp.id();
  if (granted_ttl != nullptr) *granted_ttl = resp.ttl();
  return st;
}

etcd_status etcd_client::lease_keep_alive(std::int64_t id, std::int64_t* ttl_left,
                                          std::chrono::milliseconds timeout) {
  if (!impl_->lease) return failed("no etcd endpoints");
  grpc::ClientContext ctx;
  impl_->deadline(ctx, timeout.count() > 0 ? timeout : impl_->options.rpc_timeout);
  auto stream = impl_->lease->LeaseKeepAlive(&ctx);
  pb::LeaseKeepAliveRequest req;
  req.set_id(id);
  pb::LeaseKeepAliveResponse resp;
  const bool exchanged = stream->Write(req) && stream->Read(&resp);
  stream->WritesDone();
  if (!exchanged) {
    ctx.TryCancel();
    etcd_status st = from_grpc(stream->Finish());
    if (st.ok()) st = failed("etcd: keep-alive stream ended without an answer");
    return st;
  }
  ctx.TryCancel();  // one round trip is all this call wants; the stream's end is not an error
  stream->Finish();
  *ttl_left = resp.ttl();
  return etcd_status::success();
}

etcd_status etcd_client::lease_revoke(std::int64_t id) {
  if (!impl_->lease) return failed("no etcd endpoints");
  pb::LeaseRevokeRequest req;
  req.set_id(id);
  pb::LeaseRevokeResponse resp;
  grpc::ClientContext ctx;
  impl_->deadline(ctx);
  return from_grpc(impl_->lease->LeaseRevoke(&ctx, req, &resp));
}

etcd_status etcd_client::create(const std::string& key, const std::string& value,
                                std::int64_t lease, bool* created, std::int64_t* create_revision,
                                std::string* value_now, const std::string& leaving) {
  if (!impl_->kv) return failed("no etcd endpoints");
  pb::TxnRequest txn;
  if (!leaving.empty()) {
    txn.add_success()->mutable_request_delete_range()->set_key(leaving);
    txn.add_failure()->mutable_request_delete_range()->set_key(leaving);
  }
  pb::Compare* cmp = txn.add_compare();
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_target(pb::Compare::CREATE);
  cmp->set_key(key);
  cmp->set_create_revision(0);  // the key does not exist
  pb::PutRequest* put = txn.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  txn.add_success()->mutable_request_range()->set_key(key);
  txn.add_failure()->mutable_request_range()->set_key(key);
  pb::TxnResponse resp;
  grpc::ClientContext ctx;
  impl_->deadline(ctx);
  grpc::Status gs = impl_->kv->Txn(&ctx, txn, &resp);
  etcd_status st = impl_->finish(gs);
  if (!st.ok()) return st;
  *created = resp.succeeded();
  const pb::ResponseOp& last = resp.responses(resp.responses_size() - 1);
  if (!last.has_response_range() || last.response_range().kvs_size() == 0) {
    return failed("etcd: the key vanished within its own transaction");
  }
  const mvccpb::KeyValue& kv = last.response_range().kvs(0);
  *create_revision = kv.create_revision();
  if (value_now != nullptr) *value_now = kv.value();
  return st;
}

etcd_status etcd_client::list_prefix(const std::string& prefix, std::vector<etcd_kv>* out,
                                     std::int64_t* revision) {
  if (!impl_->kv) return failed("no etcd endpoints");
  pb::RangeRequest req;
  req.set_key(prefix);
  req.set_range_end(prefix_end(prefix));
  req.set_sort_target(pb::RangeRequest::CREATE);
  req.set_sort_order(pb::RangeRequest::ASCEND);
  pb::RangeResponse resp;
  grpc::ClientContext ctx;
  impl_->deadline(ctx);
  grpc::Status gs = impl_->kv->Range(&ctx, req, &resp);
  etcd_status st = impl_->finish(gs);
  if (!st.ok()) return st;
  out->clear();
  out->reserve(static_cast<std::size_t>(resp.kvs_size()));
  for (const mvccpb::KeyValue& kv : resp.kvs()) {
    out->push_back({kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.lease()});
  }
  if (revision != nullptr) *revision = resp.header().revision();
  return st;
}

etcd_status etcd_client::remove(const std::string& key, bool* deleted) {
  if (!impl_->kv) return failed("no etcd endpoints");
  pb::DeleteRangeRequest req;
  req.set_key(key);
  pb::DeleteRangeResponse resp;
  grpc::ClientContext ctx;
  impl_->deadline(ctx);
  grpc::Status gs = impl_->kv->DeleteRange(&ctx, req, &resp);
  etcd_status st = impl_->finish(gs);
  if (st.ok() && deleted != nullptr) *deleted = resp.deleted() > 0;
  return st;
}

etcd_status etcd_client::put(const std::string& key, const std::string& value,
                             std::int64_t lease, std::int64_t* revision) {
  if (!impl_->kv) return failed("no etcd endpoints");
  pb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  req.set_lease(lease);
  pb::PutResponse resp;
  grpc::ClientContext ctx;
  impl_->deadline(ctx);
  grpc::Status gs = impl_->kv->Put(&ctx, req, &resp);
  etcd_status st = impl_->finish(gs);
  if (st.ok() && revision != nullptr) *revision = resp.header().revision();
  return st;
}

void etcd_client::cancel_watch() {
  std::lock_guard<std::mutex> lock(impl_->watch_mutex);
  impl_->watch_cancelled = true;
  if (impl_->watch_ctx != nullptr) impl_->watch_ctx->TryCancel();
}

etcd_status etcd_client::watch_prefix(
    const std::string& prefix, std::int64_t start_revision,
    const std::function<bool(const etcd_watch_batch&)>& on_batch) {
  if (!impl_->watch) return failed("no etcd endpoints");
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(false);  // a member down: fail now, the caller lists and watches again
  if (!impl_->options.user.empty()) {
    std::string token = impl_->current_token();
    if (!token.empty()) ctx.AddMetadata("token", token);
  }
  {
    std::lock_guard<std::mutex> lock(impl_->watch_mutex);
    if (impl_->watch_cancelled) return etcd_status::success();
    impl_->watch_ctx = &ctx;
  }
  struct unregister {
    impl* self;
    ~unregister() {
      std::lock_guard<std::mutex> lock(self->watch_mutex);
      self->watch_ctx = nullptr;
    }
  } guard{impl_.get()};
  auto stream = impl_->watch->Watch(&ctx);
  pb::WatchRequest req;
  pb::WatchCreateRequest* create = req.mutable_create_request();
  create->set_key(prefix);
  create->set_range_end(prefix_end(prefix));
  create->set_start_revision(start_revision);
  create->set_progress_notify(true);
  if (!stream->Write(req)) return from_grpc(stream->Finish());
  pb::WatchResponse resp;
  etcd_watch_batch batch;
  while (stream->Read(&resp)) {
    if (resp.canceled() || resp.compact_revision() != 0) {
      ctx.TryCancel();
      stream->Finish();
      return failed("etcd: watch cancelled: " +
                    (resp.compact_revision() != 0 ? std::string("compacted")
                                                  : resp.cancel_reason()));
    }
    batch.revision = resp.header().revision();
    batch.events.clear();
    for (const mvccpb::Event& ev : resp.events()) {
      etcd_event out;
      out.what = ev.type() == mvccpb::Event::DELETE ? etcd_event::kind::remove
                                                    : etcd_event::kind::put;
      const mvccpb::KeyValue& kv = ev.kv();
      out.kv = {kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.lease()};
      batch.events.push_back(std::move(out));
    }
    if (!on_batch(batch)) {
      ctx.TryCancel();
      stream->Finish();
      return etcd_status::success();
    }
  }
  grpc::Status end = stream->Finish();
  {
    std::lock_guard<std::mutex> lock(impl_->watch_mutex);
    if (impl_->watch_cancelled) return etcd_status::success();
  }
  etcd_status st = from_grpc(end);
  if (st.ok()) st = failed("etcd: watch ended");
  return st;
}

etcd_status etcd_client::wait_deleted(const std::string& key, std::int64_t start_revision,
                                      std::chrono::milliseconds timeout, bool* deleted) {
  if (!impl_->watch) return failed("no etcd endpoints");
  *deleted = false;
  // Two bounds, not one: reaching etcd until it confirms the watch takes at most rpc_timeout,
  // like any call, and the wait proper then takes `timeout`, counted from the confirmation.
  // One deadline over both reported a loaded etcd, slow to confirm, as unreachable when the
  // timeout was short. A synchronous stream's Read has no bound of its own, so a watchdog
  // thread ends the stream (TryCancel) when the phase it is in runs out.
  enum class phase : std::uint8_t { confirming, watching, done };
  grpc::ClientContext ctx;
  impl_->deadline(ctx, impl_->options.rpc_timeout + timeout);  // a backstop only
  std::mutex mutex;
  std::condition_variable changed;
  phase now = phase::confirming;  // under mutex
  phase ran_out = phase::done;    // the phase the watchdog ended, if any; read after join
  std::thread watchdog;
  try {  // failures are values here, never exceptions (etcd_client.hpp)
    watchdog = std::thread([&] {
      std::unique_lock<std::mutex> lock(mutex);
      const auto left = [&](phase p) { return [&now, p] { return now != p; }; };
      if (!changed.wait_for(lock, impl_->options.rpc_timeout, left(phase::confirming))) {
        ran_out = phase::confirming;
        ctx.TryCancel();
      } else if (!changed.wait_for(lock, timeout, left(phase::watching))) {
        ran_out = phase::watching;
        ctx.TryCancel();
      }
    });
  } catch (const std::system_error& e) {
    return failed(std::string("etcd: no thread for the watch's timer: ") + e.what());
  }
  const auto enter = [&](phase p) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (now == phase::done) return;
      now = p;
    }
    changed.notify_one();
  };
  // The watchdog is told and joined before this returns, also if something below throws.
  const auto stop_watchdog = [&] {
    enter(phase::done);
    if (watchdog.joinable()) watchdog.join();
  };
  struct joins {
    const decltype(stop_watchdog)& stop;
    ~joins() { stop(); }
  } const joined{stop_watchdog};

  auto stream = impl_->watch->Watch(&ctx);
  pb::WatchRequest req;
  pb::WatchCreateRequest* create = req.mutable_create_request();
  create->set_key(key);
  create->set_start_revision(start_revision);
  bool confirmed = false;
  std::string cancel_reason;
  bool cancelled = false;
  pb::WatchResponse resp;
  if (stream->Write(req)) {
    while (stream->Read(&resp)) {
      if (resp.created() && !confirmed) {
        confirmed = true;
        enter(phase::watching);
      }
      if (resp.canceled()) {
        cancelled = true;
        cancel_reason = resp.cancel_reason();
        break;
      }
      for (const mvccpb::Event& ev : resp.events()) {
        if (ev.type() == mvccpb::Event::DELETE) *deleted = true;
      }
      if (*deleted) break;
    }
  }
  stop_watchdog();
  if (*deleted || cancelled) ctx.TryCancel();  // leaving the stream early: its end is ours
  const grpc::Status end = stream->Finish();
  if (*deleted) return etcd_status::success();
  if (cancelled) return failed("etcd: watch cancelled: " + cancel_reason);
  // Once etcd confirmed the watch, running out of time is the normal "not deleted within
  // timeout". Before that, nothing is known: etcd was not reached in time.
  if (confirmed && (ran_out == phase::watching ||
                    end.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)) {
    return etcd_status::success();
  }
  if (ran_out == phase::confirming) {
    etcd_status st;
    st.what = etcd_status::code::unavailable;
    st.message = "etcd: no watch confirmed within " +
                 std::to_string(impl_->options.rpc_timeout.count()) + " ms";
    return st;
  }
  etcd_status st = from_grpc(end);
  if (st.ok()) st = failed("etcd: watch ended without an answer");
  return st;
}

}  // namespace keylock
