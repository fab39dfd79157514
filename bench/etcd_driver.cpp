#include "etcd_driver.hpp"

#ifdef KEYLOCK_BENCH_ETCD

#include "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.grpc.pb.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

#include <grpcpp/grpcpp.h>

namespace keylock::bench {

namespace {

constexpr std::int64_t lease_ttl_s = 60;

std::string failure(const char* what, const grpc::Status& s) {
  std::string out = "etcd ";
  out += what;
  out += ": ";
  out += s.error_message();
  return out;
}

}  // namespace

bool etcd_supported() noexcept { return true; }

struct etcd_lock_conn::impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v3lockpb::Lock::Stub> locks;
  std::unique_ptr<etcdserverpb::Lease::Stub> leases;
  std::int64_t lease = 0;
  std::chrono::milliseconds timeout{10000};

  void bound(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  }
};

etcd_lock_conn::etcd_lock_conn() : impl_(std::make_unique<impl>()) {}
etcd_lock_conn::~etcd_lock_conn() { close(); }

std::string etcd_lock_conn::connect(const std::string& endpoints,
                                    std::chrono::milliseconds io_timeout) {
  impl_->timeout = io_timeout;
  const std::string target =
      endpoints.find(',') == std::string::npos ? endpoints : "ipv4:" + endpoints;
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("round_robin");
  impl_->channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  impl_->locks = v3lockpb::Lock::NewStub(impl_->channel);
  impl_->leases = etcdserverpb::Lease::NewStub(impl_->channel);
  etcdserverpb::LeaseGrantRequest req;
  req.set_ttl(lease_ttl_s);
  etcdserverpb::LeaseGrantResponse resp;
  grpc::ClientContext ctx;
  impl_->bound(ctx);
  ctx.set_wait_for_ready(true);
  grpc::Status s = impl_->leases->LeaseGrant(&ctx, req, &resp);
  if (!s.ok()) return failure("LeaseGrant", s);
  impl_->lease = resp.id();
  return {};
}

std::string etcd_lock_conn::lock(std::string_view key, std::string* lock_key,
                                 std::int64_t* revision) {
  v3lockpb::LockRequest req;
  req.set_name(std::string(key));
  req.set_lease(impl_->lease);
  v3lockpb::LockResponse resp;
  grpc::ClientContext ctx;
  impl_->bound(ctx);
  grpc::Status s = impl_->locks->Lock(&ctx, req, &resp);
  if (!s.ok()) return failure("Lock", s);
  *lock_key = resp.key();
  *revision = resp.header().revision();
  return {};
}

std::string etcd_lock_conn::unlock(const std::string& lock_key) {
  v3lockpb::UnlockRequest req;
  req.set_key(lock_key);
  v3lockpb::UnlockResponse resp;
  grpc::ClientContext ctx;
  impl_->bound(ctx);
  grpc::Status s = impl_->locks->Unlock(&ctx, req, &resp);
  if (!s.ok()) return failure("Unlock", s);
  return {};
}

void etcd_lock_conn::close() {
  if (impl_->lease == 0) return;
  etcdserverpb::LeaseRevokeRequest req;
  req.set_id(impl_->lease);
  etcdserverpb::LeaseRevokeResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->leases->LeaseRevoke(&ctx, req, &resp);  // best effort: else it runs out by its ttl
  impl_->lease = 0;
}

}  // namespace keylock::bench

#else  // built without cluster mode: no gRPC

namespace keylock::bench {

bool etcd_supported() noexcept { return false; }
struct etcd_lock_conn::impl {};
etcd_lock_conn::etcd_lock_conn() = default;
etcd_lock_conn::~etcd_lock_conn() = default;
std::string etcd_lock_conn::connect(const std::string&, std::chrono::milliseconds) {
  return "keylock-bench was built without cluster mode (KEYLOCK_BUILD_CLUSTER=OFF): no etcd";
}
std::string etcd_lock_conn::lock(std::string_view, std::string*, std::int64_t*) {
  return "no etcd";
}
std::string etcd_lock_conn::unlock(const std::string&) { return "no etcd"; }
void etcd_lock_conn::close() {}

}  // namespace keylock::bench

#endif
