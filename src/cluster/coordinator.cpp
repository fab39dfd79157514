#include "cluster/coordinator.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>

namespace keylock {

namespace {

constexpr unsigned seq_bits = 20;
constexpr std::uint64_t seq_limit = std::uint64_t{1} << seq_bits;
// H stays below 2^33 so that tokens stay below 2^53 (PROTOCOL.md "Cluster mode").
constexpr std::uint64_t revision_limit = std::uint64_t{1} << 33;

std::string hex64(std::int64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(static_cast<std::uint64_t>(v)));
  return buf;
}

}  // namespace

coordinator::coordinator(coordinator_options options, etcd_port& port,
                         std::function<tick()> proven_until)
    : options_(std::move(options)), port_(port), proven_until_(std::move(proven_until)) {}

std::string coordinator::md5_hex(std::string_view key) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(key.data(), key.size(), digest, &len, EVP_md5(), nullptr);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

std::string coordinator::queue_prefix(std::string_view key) const {
  std::string out = options_.prefix;
  out += "k/";
  out += md5_hex(key);
  out += '/';
  return out;
}

bool coordinator::parse_key(const std::string& etcd_key, std::string* hash) const {
  const std::string& p = options_.prefix;
  if (etcd_key.size() < p.size() + 2 + 32 + 1 || etcd_key.compare(0, p.size(), p) != 0 ||
      etcd_key.compare(p.size(), 2, "k/") != 0 || etcd_key[p.size() + 2 + 32] != '/') {
    return false;
  }
  hash->assign(etcd_key, p.size() + 2, 32);
  return true;
}

// --- key_gate ----------------------------------------------------------------------------------

bool coordinator::holds(std::string_view key) const {
  auto it = rights_.find(key);
  return it != rights_.end() && it->second.at == phase::held && !it->second.closing;
}

void coordinator::mark(std::string_view key) {
  if (dirty_set_.find(key) != dirty_set_.end()) return;
  dirty_.push_back(*dirty_set_.emplace(key).first);
}

void coordinator::wanted(std::string_view key) { mark(key); }

void coordinator::granted(std::string_view key) {
  auto it = rights_.find(key);
  if (it == rights_.end()) return;
  right& r = it->second;
  ++counters_.local_grants;
  if (r.grants > 0) ++counters_.local_handoffs;
  ++r.grants;
  r.idle = false;
  if (r.grants >= options_.handoff_limit) mark(key);  // maybe time to hand off
}

void coordinator::quiet(std::string_view key) { mark(key); }

std::uint32_t coordinator::ttl_cap(tick now) const {
  const tick left = proven_until_() - now;
  if (left <= tick{0}) return 0;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(left).count();
  std::uint64_t cap = static_cast<std::uint64_t>(ms);
  if (options_.max_ttl_ms != 0) cap = std::min<std::uint64_t>(cap, options_.max_ttl_ms);
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(cap, UINT32_MAX));
}

// --- token_source ------------------------------------------------------------------------------

bool coordinator::ready() const {
  if (high_revision_ == 0 || high_revision_ >= revision_limit || seq_ >= seq_limit) return false;
  const tick now =
      options_.clock ? options_.clock() : tick(std::chrono::steady_clock::now().time_since_epoch());
  return lease_ != 0 && now < proven_until_();
}

std::uint64_t coordinator::next() {
  const std::uint64_t token = (high_revision_ << seq_bits) | seq_;
  ++seq_;
  if (seq_ >= seq_limit / 2 && !bump_pending_) {
    bump_pending_ = true;
    port_.bump_revision();
  }
  return token;
}

void coordinator::on_revision(std::int64_t revision, tick now, std::vector<table_event>& events) {
  if (revision <= 0) {  // a put to learn a newer revision failed: ask again
    bump_pending_ = seq_ >= seq_limit / 2;
    if (bump_pending_) port_.bump_revision();
    return;
  }
  const auto rev = static_cast<std::uint64_t>(revision);
  if (rev > high_revision_) {
    const bool was_ready = ready();
    high_revision_ = rev;
    seq_ = 0;
    bump_pending_ = false;
    if (!was_ready) resume(now, events);
  }
}

void coordinator::resume(tick now, std::vector<table_event>& events) {
  if (table_ != nullptr && ready()) table_->resume_grants(now, events);
}

// --- the etcd lease ----------------------------------------------------------------------------

void coordinator::session_up(std::int64_t lease, tick now, std::vector<table_event>& events) {
  lease_ = lease;
  lease_hex_ = hex64(lease);
  for (auto& [key, r] : rights_) mark(key);  // demand that waited for a lease
  resume(now, events);
  process(now, events);
}

void coordinator::session_lost(tick now, std::vector<table_event>& events) {
  if (lease_ == 0) return;
  ++counters_.sessions_lost;
  lease_ = 0;
  // Our etcd keys die with the lease: every right is forgotten (kept as demand to re-request).
  for (auto& [key, r] : rights_) r.forget();
  kept_.clear();
  if (table_ != nullptr) table_->lose_all(now, events);
}

// --- etcd answers ------------------------------------------------------------------------------

void coordinator::on_created(const std::string& key, const std::string& etcd_key, bool ok,
                             std::int64_t create_revision, tick now,
                             std::vector<table_event>& events) {
  auto it = rights_.find(key);
  if (it == rights_.end() || it->second.at != phase::creating || it->second.etcd_key != etcd_key) {
    return;  // an answer for an earlier lease: its key dies with that lease
  }
  right& r = it->second;
  if (!ok) {
    port_.create(key, etcd_key, lease_, r.leaving);  // the Txn is idempotent: try again
    return;
  }
  r.leaving.clear();
  r.at = phase::queued;
  r.create_revision = create_revision;
  mark(key);
  process(now, events);
}

void coordinator::on_removed(const std::string& key, const std::string& etcd_key, bool ok, tick now,
                             std::vector<table_event>& events) {
  auto it = rights_.find(key);
  if (it == rights_.end() || it->second.at != phase::removing || it->second.etcd_key != etcd_key) {
    return;
  }
  if (!ok) {
    port_.remove(key, etcd_key);
    return;
  }
  it->second.forget();
  mark(key);  // demand left here queues again, behind the daemons that waited
  process(now, events);
}

void coordinator::apply_event(const etcd_event& ev) {
  std::string hash;
  if (!parse_key(ev.kv.key, &hash)) return;
  if (ev.what == etcd_event::kind::put) {
    mirror_[hash][ev.kv.create_revision] = mirror_entry{ev.kv.key, ev.kv.value};
  } else {
    auto q = mirror_.find(hash);
    if (q != mirror_.end()) {
      for (auto e = q->second.begin(); e != q->second.end(); ++e) {
        if (e->second.etcd_key == ev.kv.key) {
          q->second.erase(e);
          break;
        }
      }
      if (q->second.empty()) mirror_.erase(q);
    }
  }
  if (auto k = key_of_hash_.find(hash); k != key_of_hash_.end()) mark(k->second);
}

void coordinator::on_snapshot(std::int64_t revision, const std::vector<etcd_kv>& kvs, tick now,
                              std::vector<table_event>& events) {
  mirror_.clear();
  std::string hash;
  for (const etcd_kv& kv : kvs) {
    if (parse_key(kv.key, &hash))
      mirror_[hash][kv.create_revision] = mirror_entry{kv.key, kv.value};
  }
  mirror_revision_ = revision;
  for (auto& [key, r] : rights_) mark(key);
  on_revision(revision, now, events);
  process(now, events);
}

void coordinator::on_watch(const etcd_watch_batch& batch, tick now,
                           std::vector<table_event>& events) {
  for (const etcd_event& ev : batch.events) apply_event(ev);
  mirror_revision_ = std::max(mirror_revision_, batch.revision);
  on_revision(batch.revision, now, events);
  process(now, events);
}

// --- decisions ---------------------------------------------------------------------------------

// Daemons queued behind us for the key.
std::size_t coordinator::others_behind(const right& r) const {
  auto q = mirror_.find(r.hash);
  if (q == mirror_.end()) return 0;
  return static_cast<std::size_t>(
      std::distance(q->second.upper_bound(r.create_revision), q->second.end()));
}

// Whether the mirror is recent enough to tell if our key heads its queue; *head says if so.
bool coordinator::head_known(const right& r, bool* head) const {
  if (mirror_revision_ < r.create_revision) return false;
  auto q = mirror_.find(r.hash);
  if (q == mirror_.end() || q->second.empty()) return false;  // our own put not seen yet
  auto first = q->second.begin();
  *head = first->first == r.create_revision;
  if (!*head && q->second.find(r.create_revision) == q->second.end()) return false;
  return true;
}

void coordinator::request(const std::string& key, right& r) {
  r.etcd_key = queue_prefix(key);
  r.etcd_key += lease_hex_;
  r.etcd_key += '.';
  r.etcd_key += std::to_string(++requests_);
  r.at = phase::creating;
  port_.create(key, r.etcd_key, lease_, r.leaving);
}

void coordinator::give_up(const std::string& key, right& r, bool to_other) {
  if (table_ != nullptr) table_->close_key(key);
  if (to_other) {
    ++counters_.remote_handoffs;
  } else {
    ++counters_.idle_releases;
  }
  r.idle = false;
  r.grants = 0;
  r.closing = false;
  if (table_ != nullptr && table_->activity(key).waiting > 0) {
    // Demand remains here: queue again behind the daemons that waited, in the transaction that
    // passes the right on (one etcd write per handoff, and no gap with no request of ours).
    r.leaving = std::move(r.etcd_key);
    r.create_revision = 0;
    request(key, r);
    return;
  }
  r.at = phase::removing;
  port_.remove(key, r.etcd_key);
}

void coordinator::evaluate(const std::string& key, tick now, std::vector<table_event>& events) {
  if (table_ == nullptr) return;
  const key_activity act = table_->activity(key);
  const bool demand = act.waiting > 0;
  auto it = rights_.find(key);
  if (it == rights_.end()) {
    if (!demand) return;
    it = rights_.emplace(key, right{}).first;
    it->second.hash = md5_hex(key);
    key_of_hash_[it->second.hash] = key;
  }
  right& r = it->second;
  switch (r.at) {
    case phase::none:
      if (!demand) {
        key_of_hash_.erase(r.hash);
        rights_.erase(it);
        return;
      }
      if (lease_ == 0) return;  // re-requested by session_up
      request(key, r);
      return;
    case phase::creating:
    case phase::removing:
      return;  // the answer comes back here
    case phase::queued: {
      bool head = false;
      if (!head_known(r, &head)) return;
      if (head) {
        r.at = phase::held;
        r.grants = 0;
        r.closing = false;
        ++counters_.global_acquisitions;
        on_revision(mirror_revision_, now, events);  // H >= the revision of the win
        table_->open_key(key, now, events);
        evaluate(key, now, events);  // nothing to grant here any more: idle or hand off
        return;
      }
      // Another daemon holds or waits for the key: a try-lock here is busy.
      table_->drop_tries(key, now, events);
      const key_activity left = table_->activity(key);
      if (left.waiting == 0 && left.held == 0) give_up(key, r, false);
      return;
    }
    case phase::held: {
      const std::size_t others = others_behind(r);
      if (others > 0) {
        if (r.grants >= options_.handoff_limit && !r.closing) {
          r.closing = true;
          table_->close_key(key);
        }
        // Nothing here can use the right now (no holder; a waiter still queued with the key
        // open is held back elsewhere): pass it on, unless a lost lease's lock delay runs, or
        // a set waiting here has taken its rights in key order up to this one (it keeps them
        // while it waits for its later keys: sets taking rights in one order never wait in a
        // cycle, whereas giving every key away lets sets from several daemons chase each
        // other's rights forever).
        if (act.held == 0 && !act.in_delay) {
          if (!r.closing && act.waiting > 0 &&
              table_->set_needs_in_order(key, [this](std::string_view k) { return holds(k); })) {
            if (std::find(kept_.begin(), kept_.end(), key) == kept_.end()) kept_.push_back(key);
            return;
          }
          give_up(key, r, true);
        }
        return;
      }
      if (act.held == 0 && act.waiting == 0) {
        if (!r.idle) {
          r.idle = true;
          r.idle_until = now + options_.idle_keep;
          idle_timers_.emplace_back(r.idle_until, key);
        } else if (now >= r.idle_until) {
          give_up(key, r, false);
        }
      } else {
        r.idle = false;
        if (r.closing && act.held == 0) {
          // Was handing off, but the daemon waiting left: open again.
          r.closing = false;
          r.grants = 0;
          table_->open_key(key, now, events);
        }
      }
      return;
    }
  }
}

void coordinator::process(tick now, std::vector<table_event>& events) {
  // Rights kept for a set in key order are looked at again after every batch: a right given
  // up, or the set granted, cancelled or timed out, may have ended the reason to keep them.
  for (const std::string& k : kept_) mark(k);
  kept_.clear();
  // Idle timers that are due.
  while (!idle_timers_.empty() && idle_timers_.front().first <= now) {
    mark(idle_timers_.front().second);
    idle_timers_.pop_front();
  }
  // evaluate() may mark more keys (through the table's callbacks): work to a fixpoint.
  for (std::size_t i = 0; i < dirty_.size(); ++i) {
    const std::string key = dirty_[i];
    dirty_set_.erase(key);
    evaluate(key, now, events);
  }
  dirty_.clear();
  dirty_set_.clear();
}

std::optional<tick> coordinator::next_deadline() const {
  if (idle_timers_.empty()) return std::nullopt;
  return idle_timers_.front().first;
}

std::size_t coordinator::rights_held() const {
  std::size_t n = 0;
  for (const auto& [key, r] : rights_) n += r.at == phase::held;
  return n;
}

cluster_view coordinator::view(std::string_view key) const {
  cluster_view out;
  auto q = mirror_.find(md5_hex(key));
  if (q == mirror_.end() || q->second.empty()) return out;
  out.holder = q->second.begin()->second.node;
  out.daemons_waiting = q->second.size() - 1;
  return out;
}

}  // namespace keylock
