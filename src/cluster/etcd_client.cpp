// etcd_client.hpp over the generated gRPC stubs (synchronous API). The one TU of keylock that
// includes gRPC headers.
#include "cluster/etcd_client.hpp"

#include <grpcpp/grpcpp.h>

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
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;

  void deadline(grpc::ClientContext& ctx, std::chrono::milliseconds timeout) const {
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    ctx.set_wait_for_ready(true);  // ride out a member's restart within the deadline
  }
  void deadline(grpc::ClientContext& ctx) const { deadline(ctx, options.rpc_timeout); }
};

etcd_client::etcd_client(etcd_options options) : impl_(std::make_unique<impl>()) {
  impl_->options = std::move(options);
  if (impl_->options.endpoints.empty()) return;
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("round_robin");
  impl_->channel = grpc::CreateCustomChannel(target_of(impl_->options.endpoints),
                                             grpc::InsecureChannelCredentials(), args);
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
  etcd_status st = from_grpc(impl_->lease->LeaseGrant(&ctx, req, &resp));
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
                                std::string* value_now) {
  if (!impl_->kv) return failed("no etcd endpoints");
  pb::TxnRequest txn;
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
  etcd_status st = from_grpc(impl_->kv->Txn(&ctx, txn, &resp));
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
  etcd_status st = from_grpc(impl_->kv->Range(&ctx, req, &resp));
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
  etcd_status st = from_grpc(impl_->kv->DeleteRange(&ctx, req, &resp));
  if (st.ok() && deleted != nullptr) *deleted = resp.deleted() > 0;
  return st;
}

etcd_status etcd_client::wait_deleted(const std::string& key, std::int64_t start_revision,
                                      std::chrono::milliseconds timeout, bool* deleted) {
  if (!impl_->watch) return failed("no etcd endpoints");
  *deleted = false;
  grpc::ClientContext ctx;
  impl_->deadline(ctx, timeout);
  auto stream = impl_->watch->Watch(&ctx);
  pb::WatchRequest req;
  pb::WatchCreateRequest* create = req.mutable_create_request();
  create->set_key(key);
  create->set_start_revision(start_revision);
  if (!stream->Write(req)) return from_grpc(stream->Finish());
  pb::WatchResponse resp;
  bool watching = false;  // etcd confirmed the watch: a later deadline means "not deleted"
  while (stream->Read(&resp)) {
    watching = watching || resp.created();
    if (resp.canceled()) {
      ctx.TryCancel();
      stream->Finish();
      return failed("etcd: watch cancelled: " + resp.cancel_reason());
    }
    for (const mvccpb::Event& ev : resp.events()) {
      if (ev.type() == mvccpb::Event::DELETE) *deleted = true;
    }
    if (*deleted) break;
  }
  if (*deleted) {
    ctx.TryCancel();  // leaving the stream early: its end is ours, not an error
    stream->Finish();
    return etcd_status::success();
  }
  grpc::Status end = stream->Finish();  // Read failed: the deadline passed or the stream broke
  // Once etcd confirmed the watch, the deadline passing is the normal "not deleted within
  // timeout". Before that, nothing is known: etcd was not reached.
  if (watching && end.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return etcd_status::success();
  }
  etcd_status st = from_grpc(end);
  if (st.ok()) st = failed("etcd: watch ended without an answer");
  return st;
}

}  // namespace keylock
