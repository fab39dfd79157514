// keylock-bench's driver of etcd's own lock: the v3lock service's Lock and Unlock RPCs with a
// lease, as `etcdctl lock` takes a lock (the lock key is bound to the lease; Lock blocks until
// every older key under the name is gone). One per client thread, over its own gRPC channel,
// as separate etcdctl processes would. The only bench TU that includes gRPC (pimpl).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace keylock::bench {

// False when keylock-bench was built without cluster mode (no gRPC): etcd:// targets are
// refused with a message.
bool etcd_supported() noexcept;

class etcd_lock_conn {
 public:
  etcd_lock_conn();
  ~etcd_lock_conn();  // close()
  etcd_lock_conn(const etcd_lock_conn&) = delete;
  etcd_lock_conn& operator=(const etcd_lock_conn&) = delete;

  // Opens a channel to `endpoints` ("h:p" or "h:p,h:p,...") and grants this client's lease
  // (ttl 60 s, longer than any measured window, so no keep-alive runs during a run). Empty on
  // success, else what failed.
  std::string connect(const std::string& endpoints, std::chrono::milliseconds io_timeout);
  // Lock(name = key, lease): waits until the lock is held. Sets *revision to the revision
  // at which it was granted (the response header's), a fencing token.
  std::string lock(std::string_view key, std::string* lock_key, std::int64_t* revision);
  std::string unlock(const std::string& lock_key);
  // Revokes the lease (every lock key of this client goes with it).
  void close();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace keylock::bench
