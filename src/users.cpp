#include "users.hpp"

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace keylock {

namespace {

constexpr std::string_view hash_scheme = "pbkdf2-sha256";
constexpr std::size_t salt_bytes = 16;
constexpr std::size_t max_name_bytes = 256;

verify_counters work;

std::string base64(const unsigned char* data, std::size_t n) {
  std::string out(4 * ((n + 2) / 3), '\0');
  const int len =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(n));
  out.resize(static_cast<std::size_t>(len));
  return out;
}

// Standard base64 with padding; nullopt for anything else.
std::optional<std::vector<unsigned char>> unbase64(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return std::nullopt;
  std::vector<unsigned char> out(text.size() / 4 * 3);
  const int len = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()),
                                  static_cast<int>(text.size()));
  if (len < 0) return std::nullopt;
  std::size_t pad = 0;
  if (text.back() == '=') ++pad;
  if (text.size() >= 2 && text[text.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(len) - pad);
  return out;
}

std::array<unsigned char, 32> derive(const secret_hash& h, std::string_view secret) {
  std::array<unsigned char, 32> out{};
  PKCS5_PBKDF2_HMAC(secret.data(), static_cast<int>(secret.size()), h.salt.data(),
                    static_cast<int>(h.salt.size()), static_cast<int>(h.iterations), EVP_sha256(),
                    static_cast<int>(out.size()), out.data());
  ++work.derivations;
  work.iterations += h.iterations;
  return out;
}

bool equal_digests(const std::array<unsigned char, 32>& a, const std::array<unsigned char, 32>& b) {
  work.compared_bytes += a.size();
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::optional<std::uint8_t> parse_permission(std::string_view name) {
  if (name == "lock") return bit(permission::lock);
  if (name == "inspect") return bit(permission::inspect);
  if (name == "admin") return bit(permission::admin);
  return std::nullopt;
}

using json = nlohmann::json;

std::string where(const std::string& user, std::size_t rule = SIZE_MAX) {
  std::string w = user.empty() ? std::string("a user") : "user '" + user + "'";
  if (rule != SIZE_MAX) w += ", rule " + std::to_string(rule + 1);
  return w;
}

std::optional<std::string> parse_rule(const json& j, const std::string& user, std::size_t i,
                                      acl_rule& rule) {
  if (!j.is_object()) return where(user, i) + ": a rule is an object";
  bool has_text = false;
  for (const auto& [k, v] : j.items()) {
    if (k == "prefix" || k == "pattern") {
      if (has_text) return where(user, i) + ": give one of 'prefix' and 'pattern'";
      if (!v.is_string()) return where(user, i) + ": '" + k + "' must be a string";
      rule.text = v.get<std::string>();
      rule.is_pattern = k == "pattern";
      has_text = true;
    } else if (k == "allow") {
      if (!v.is_array() || v.empty()) {
        return where(user, i) + ": 'allow' must be a non-empty list of lock, inspect, admin";
      }
      for (const json& p : v) {
        auto b = p.is_string() ? parse_permission(p.get<std::string>()) : std::nullopt;
        if (!b) return where(user, i) + ": 'allow' lists lock, inspect or admin, not " + p.dump();
        rule.allow |= *b;
      }
    } else {
      return where(user, i) + ": unknown member '" + k + "'";
    }
  }
  if (!has_text) return where(user, i) + ": needs 'prefix' or 'pattern'";
  if (rule.allow == 0) return where(user, i) + ": needs 'allow'";
  return std::nullopt;
}

std::optional<std::string> parse_user(const json& j, user_account& u) {
  if (!j.is_object()) return "each user is an object";
  if (auto it = j.find("name"); it != j.end() && it->is_string()) u.name = it->get<std::string>();
  if (u.name.empty() || u.name.size() > max_name_bytes) {
    return where("") + ": 'name' must be a string of 1..256 bytes";
  }
  bool has_secret = false;
  for (const auto& [k, v] : j.items()) {
    if (k == "name") continue;
    if (k == "secret") {
      std::string err;
      auto h = v.is_string() ? parse_secret_hash(v.get<std::string>(), err) : std::nullopt;
      if (!h) {
        return where(u.name) + ": 'secret' must be a hash made by `keylockd --hash-secret`" +
               (err.empty() ? std::string() : " (" + err + ")");
      }
      u.secret = std::move(*h);
      has_secret = true;
    } else if (k == "cert_subject") {
      if (!v.is_string() || v.get<std::string>().empty()) {
        return where(u.name) + ": 'cert_subject' must be a non-empty string";
      }
      u.cert_subject = v.get<std::string>();
    } else if (k == "rules") {
      if (!v.is_array()) return where(u.name) + ": 'rules' must be a list";
      for (std::size_t i = 0; i < v.size(); ++i) {
        acl_rule rule;
        if (auto err = parse_rule(v[i], u.name, i, rule)) return err;
        u.any_allow |= rule.allow;
        u.rules.push_back(std::move(rule));
      }
    } else if (k == "password" || k == "auth") {
      return where(u.name) + ": '" + k +
             "' is not read: the file holds only hashes ('secret', from `keylockd --hash-secret`)";
    } else {
      return where(u.name) + ": unknown member '" + k + "'";
    }
  }
  if (!has_secret && u.cert_subject.empty()) {
    return where(u.name) + ": needs 'secret' or 'cert_subject' (else nobody can log in as it)";
  }
  return std::nullopt;
}

}  // namespace

std::array<unsigned char, 32> sha256(std::string_view s) {
  std::array<unsigned char, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

std::optional<secret_hash> parse_secret_hash(std::string_view text, std::string& error) {
  auto next = [&](std::string_view& part) {
    auto dollar = text.find('$');
    part = text.substr(0, dollar);
    text = dollar == std::string_view::npos ? std::string_view() : text.substr(dollar + 1);
    return dollar != std::string_view::npos;
  };
  std::string_view scheme, iterations, salt, hash;
  if (!next(scheme) || !next(iterations) || !next(salt) || next(hash)) {
    error = "not of the form pbkdf2-sha256$ITERATIONS$SALT$HASH";
    return std::nullopt;
  }
  if (scheme != hash_scheme) {
    error = "unknown scheme '" + std::string(scheme.substr(0, 32)) + "'";
    return std::nullopt;
  }
  secret_hash h;
  auto [end, ec] =
      std::from_chars(iterations.data(), iterations.data() + iterations.size(), h.iterations);
  if (ec != std::errc() || end != iterations.data() + iterations.size() ||
      h.iterations < min_hash_iterations || h.iterations > max_hash_iterations) {
    error = "iterations must be " + std::to_string(min_hash_iterations) + ".." +
            std::to_string(max_hash_iterations);
    return std::nullopt;
  }
  auto s = unbase64(salt);
  auto d = unbase64(hash);
  if (!s || s->size() < 8) {
    error = "the salt must be at least 8 bytes in base64";
    return std::nullopt;
  }
  if (!d || d->size() != h.hash.size()) {
    error = "the hash must be 32 bytes in base64";
    return std::nullopt;
  }
  h.salt = std::move(*s);
  std::copy(d->begin(), d->end(), h.hash.begin());
  return h;
}

std::string hash_secret(std::string_view secret, std::uint32_t iterations) {
  secret_hash h;
  h.iterations = iterations;
  h.salt.resize(salt_bytes);
  if (RAND_bytes(h.salt.data(), static_cast<int>(h.salt.size())) != 1) return {};
  h.hash = derive(h, secret);
  return std::string(hash_scheme) + "$" + std::to_string(iterations) + "$" +
         base64(h.salt.data(), h.salt.size()) + "$" + base64(h.hash.data(), h.hash.size());
}

bool secret_matches(const secret_hash& h, std::string_view secret) {
  return equal_digests(derive(h, secret), h.hash);
}

const verify_counters& verification_work() noexcept { return work; }

bool glob_matches(std::string_view pattern, std::string_view key) noexcept {
  // Iterative matching with one backtrack point (the last '*'): O(|pattern| * |key|) at worst.
  std::size_t p = 0, k = 0;
  std::size_t star = std::string_view::npos, star_k = 0;
  while (k < key.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == key[k])) {
      ++p;
      ++k;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_k = k;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      k = ++star_k;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool acl_rule::matches(std::string_view key) const noexcept {
  return is_pattern ? glob_matches(text, key) : key.substr(0, text.size()) == text;
}

std::uint8_t user_account::allowed(std::string_view key) const noexcept {
  std::uint8_t bits = 0;
  for (const acl_rule& r : rules) {
    if ((r.allow & ~bits) != 0 && r.matches(key)) bits |= r.allow;
  }
  return bits;
}

bool user_account::verified_before(std::string_view given) const {
  return has_verified_ && equal_digests(sha256(given), verified_);
}

bool user_account::check_secret(std::string_view given) const {
  const auto digest = sha256(given);
  if (has_verified_ && equal_digests(digest, verified_)) return true;
  if (secret.iterations == 0 || !secret_matches(secret, given)) return false;
  verified_ = digest;
  has_verified_ = true;
  return true;
}

std::shared_ptr<const user_directory> user_directory::parse(std::string_view text,
                                                            std::string& error) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) {
    error = "not valid JSON";
    return nullptr;
  }
  if (!j.is_object() || !j.contains("users") || !j["users"].is_array()) {
    error = "expected an object with a list 'users'";
    return nullptr;
  }
  for (const auto& [k, v] : j.items()) {
    if (k != "users") {
      error = "unknown member '" + k + "'";
      return nullptr;
    }
  }
  auto dir = std::make_shared<user_directory>();
  dir->dummy_.iterations = min_hash_iterations;
  dir->dummy_.salt.assign(salt_bytes, 0);
  for (const json& ju : j["users"]) {
    auto u = std::make_shared<user_account>();
    if (auto err = parse_user(ju, *u)) {
      error = *err;
      return nullptr;
    }
    dir->dummy_.iterations = std::max(dir->dummy_.iterations, u->secret.iterations);
    dir->users_.push_back(std::move(u));
  }
  std::sort(dir->users_.begin(), dir->users_.end(),
            [](const auto& a, const auto& b) { return a->name < b->name; });
  for (std::size_t i = 0; i < dir->users_.size(); ++i) {
    if (i > 0 && dir->users_[i - 1]->name == dir->users_[i]->name) {
      error = "user '" + dir->users_[i]->name + "' is defined twice";
      return nullptr;
    }
    const std::string& subject = dir->users_[i]->cert_subject;
    for (std::size_t k = 0; k < i && !subject.empty(); ++k) {
      if (dir->users_[k]->cert_subject == subject) {
        error = "users '" + dir->users_[k]->name + "' and '" + dir->users_[i]->name +
                "' claim the same cert_subject";
        return nullptr;
      }
    }
  }
  return dir;
}

std::shared_ptr<const user_directory> user_directory::load(const std::string& path,
                                                           std::string& error) {
  std::ifstream in(path);
  if (!in) {
    error = "cannot read users_file " + path;
    return nullptr;
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto dir = parse(text.str(), error);
  if (!dir) error = "users_file " + path + ": " + error;
  return dir;
}

std::shared_ptr<const user_account> user_directory::find(std::string_view name) const {
  auto it = std::lower_bound(users_.begin(), users_.end(), name,
                             [](const auto& u, std::string_view n) { return u->name < n; });
  if (it == users_.end() || (*it)->name != name) return nullptr;
  return *it;
}

std::shared_ptr<const user_account> user_directory::find_by_subject(
    std::string_view subject) const {
  for (const auto& u : users_) {
    if (!u->cert_subject.empty() && u->cert_subject == subject) return u;
  }
  return nullptr;
}

std::shared_ptr<const user_account> user_directory::authenticate(std::string_view name,
                                                                 std::string_view secret) const {
  auto u = find(name);
  if (u == nullptr || u->secret.iterations == 0) {
    secret_matches(dummy_, secret);  // the same work as a wrong secret
    return nullptr;
  }
  return u->check_secret(secret) ? u : nullptr;
}

}  // namespace keylock
