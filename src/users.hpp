// Users and their key ACLs (PROTOCOL.md "Users and access control"): the `users_file`, the
// salted secret hashes in it, and the permission check every op makes. Pure: no sockets, no
// logging; the file is parsed from text, so the rules are unit-tested without a daemon.
//
// A directory is immutable once built. SIGHUP builds a new one; connections hold their user
// by shared_ptr and are moved to the new directory's account of the same name (or closed when
// there is none), so a reload never leaves a connection pointing at freed rules.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keylock {

// Permissions, as bits.
enum class permission : std::uint8_t {
  lock = 1u << 0,     // acquire; release/extend of the same user's leases
  inspect = 1u << 1,  // inspect; see the key in top
  admin = 1u << 2,    // inspect, plus release/extend of another's lease; stats and top
};

constexpr std::uint8_t bit(permission p) noexcept { return static_cast<std::uint8_t>(p); }

// "pbkdf2-sha256$ITERATIONS$SALT$HASH" with SALT and HASH in standard base64 (RFC 4648, with
// padding); HASH is 32 bytes of PBKDF2-HMAC-SHA256(secret, salt, ITERATIONS).
struct secret_hash {
  std::uint32_t iterations = 0;
  std::vector<unsigned char> salt;
  std::array<unsigned char, 32> hash{};
};

inline constexpr std::uint32_t default_hash_iterations = 100'000;
inline constexpr std::uint32_t min_hash_iterations = 1'000;
inline constexpr std::uint32_t max_hash_iterations = 10'000'000;

// SHA-256 of `s`: the digest the shared secret and the verified-secret cache compare.
std::array<unsigned char, 32> sha256(std::string_view s);

// Parses the text form; nullopt with `error` set when it is not one.
std::optional<secret_hash> parse_secret_hash(std::string_view text, std::string& error);

// The text form of `secret` hashed with a fresh random 16-byte salt.
std::string hash_secret(std::string_view secret,
                        std::uint32_t iterations = default_hash_iterations);

// PBKDF2 of `secret` under `h`'s salt and iterations, compared with `h.hash` in constant time
// (CRYPTO_memcmp over the fixed 32 bytes: the time does not depend on where, or whether, the
// secrets differ, nor on the given secret's length beyond hashing it).
bool secret_matches(const secret_hash& h, std::string_view secret);

// How much verification work was done, for tests that check every path does the same work.
struct verify_counters {
  std::uint64_t derivations = 0;     // PBKDF2 runs
  std::uint64_t iterations = 0;      // their iterations, summed
  std::uint64_t compared_bytes = 0;  // bytes compared by CRYPTO_memcmp
};
const verify_counters& verification_work() noexcept;

// A rule: keys by prefix (every key starting with `text`) or by pattern (`*` any run of bytes,
// `?` one byte), and the permissions it grants.
struct acl_rule {
  std::string text;
  bool is_pattern = false;
  std::uint8_t allow = 0;  // permission bits

  bool matches(std::string_view key) const noexcept;
};

// Glob match of `key` against `pattern` (`*`, `?`; no escapes), linear in practice.
bool glob_matches(std::string_view pattern, std::string_view key) noexcept;

struct user_account {
  std::string name;
  secret_hash secret;
  std::string cert_subject;  // RFC 2253 subject of a client certificate that logs in as this user
  std::vector<acl_rule> rules;
  std::uint8_t any_allow = 0;  // union of every rule's permissions

  // The permissions the user has on `key` (union of the matching rules).
  std::uint8_t allowed(std::string_view key) const noexcept;
  bool may(permission p, std::string_view key) const noexcept {
    return (allowed(key) & bit(p)) != 0;
  }
  // Whether some rule grants `p` (stats and top need admin somewhere).
  bool may_somewhere(permission p) const noexcept { return (any_allow & bit(p)) != 0; }

  // Verifies `secret` (see secret_matches). A secret verified once is remembered as its
  // SHA-256, so a client that reconnects costs one SHA-256, not a PBKDF2 run, on the event loop.
  bool check_secret(std::string_view secret) const;
  // Whether `secret` is the one check_secret verified last (one SHA-256, no PBKDF2).
  bool verified_before(std::string_view secret) const;

 private:
  mutable std::array<unsigned char, 32> verified_{};
  mutable bool has_verified_ = false;
};

class user_directory {
 public:
  // Parses a users_file's text. nullopt with `error` set (naming the user or rule at fault)
  // when it is not valid: every problem is found at load, never at a client's hello.
  static std::shared_ptr<const user_directory> parse(std::string_view text, std::string& error);

  // Reads and parses the file at `path`.
  static std::shared_ptr<const user_directory> load(const std::string& path, std::string& error);

  std::shared_ptr<const user_account> find(std::string_view name) const;
  std::shared_ptr<const user_account> find_by_subject(std::string_view subject) const;
  std::size_t size() const { return users_.size(); }

  // The login check: the user's account when `name` exists and `secret` is its secret, else
  // nullptr. An unknown name costs the same PBKDF2 as a wrong secret (a dummy hash with the
  // directory's most expensive iteration count), so the time does not tell names apart.
  std::shared_ptr<const user_account> authenticate(std::string_view name,
                                                   std::string_view secret) const;

 private:
  std::vector<std::shared_ptr<const user_account>> users_;  // sorted by name
  secret_hash dummy_;
};

}  // namespace keylock
