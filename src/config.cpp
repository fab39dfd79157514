#include "config.hpp"

#include <arpa/inet.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <variant>
#include <vector>

#include "keylock_version.hpp"

namespace keylock {

namespace {

using u32_member = std::uint32_t config::*;
using str_member = std::string config::*;

// One row per setting: JSON key, flag (the key with dashes), help, and for numbers the range
// checked at start-up. Adding a setting means adding a member to `config` and a row here.
struct setting {
  const char* name;
  std::variant<str_member, u32_member> member;
  const char* help;
  std::uint32_t min = 0;
  std::uint32_t max = 0;
};

constexpr std::uint32_t u32_max = 0xffffffffu;

const std::vector<setting>& settings() {
  static const std::vector<setting> rows = {
      {"listen", &config::listen, "Address of the lock protocol, HOST:PORT"},
      {"state_dir", &config::state_dir,
       "Directory for durable state (fencing tokens); empty: none"},
      {"auth", &config::auth, "Shared secret clients must send in hello (never logged)"},
      {"auth_file", &config::auth_file, "File whose first line is the shared secret"},
      {"users_file", &config::users_file,
       "JSON file of users, their hashed secrets and key ACLs (see --hash-secret)"},
      {"log_level", &config::log_level, "trace, debug, info, warn, error, critical or off"},
      {"log_format", &config::log_format, "text, or json for one JSON object per line"},
      {"metrics_listen", &config::metrics_listen,
       "HTTP address for /metrics, /healthz and /readyz, HOST:PORT; empty: none"},
      {"listen_tls", &config::listen_tls,
       "Address of the lock protocol over TLS, HOST:PORT; empty: none (needs tls_cert_file and "
       "tls_key_file)"},
      {"tls_cert_file", &config::tls_cert_file,
       "TLS: the server's certificate (PEM, may hold its chain)"},
      {"tls_key_file", &config::tls_key_file, "TLS: the server's private key (PEM)"},
      {"tls_ca_file", &config::tls_ca_file,
       "TLS: CA bundle (PEM); when set, clients must present a certificate it signed (mutual "
       "TLS)"},
      {"tls_handshake_timeout_ms", &config::tls_handshake_timeout_ms,
       "TLS: close a connection whose handshake is not done within this long", 100, 600'000},
      {"metrics_tls", &config::metrics_tls,
       "1: serve metrics_listen over HTTPS with tls_cert_file and tls_key_file (with "
       "tls_ca_file, scrapers must present a client certificate); 0: plain HTTP",
       0, 1},
      {"max_connections", &config::max_connections, "Most client connections at once", 1,
       1'000'000},
      {"max_frame_bytes", &config::max_frame_bytes, "Longest request line in bytes", 256,
       16u << 20},
      {"max_key_bytes", &config::max_key_bytes, "Longest key in bytes", 1, 65536},
      {"default_ttl_ms", &config::default_ttl_ms, "Lease ttl when acquire gives none", 1, u32_max},
      {"max_ttl_ms", &config::max_ttl_ms, "Largest ttl_ms accepted", 1, u32_max},
      {"max_wait_ms", &config::max_wait_ms, "Largest wait_ms accepted", 0, u32_max},
      {"max_limit", &config::max_limit, "Largest semaphore limit accepted", 1, 1'000'000},
      {"max_keys", &config::max_keys, "Most live keys", 1, u32_max - 1},
      {"max_waiters_per_key", &config::max_waiters_per_key, "Most queued acquires on one key", 1,
       u32_max},
      {"max_pending_per_connection", &config::max_pending_per_connection,
       "Most queued acquires of one connection", 1, u32_max},
      {"max_output_bytes", &config::max_output_bytes,
       "Unsent reply bytes after which a connection that does not read is closed", 4096, u32_max},
      {"write_timeout_ms", &config::write_timeout_ms,
       "Close a connection whose unsent replies make no progress for this long", 100, 3'600'000},
      {"auth_timeout_ms", &config::auth_timeout_ms,
       "With auth: close a connection that has not completed hello within this long", 100, 600'000},
      {"max_unauthenticated_connections", &config::max_unauthenticated_connections,
       "With auth: most connections not yet through hello (the oldest is closed for a new one; "
       "at most half of max_connections)",
       1, 1'000'000},
      {"max_leases_per_connection", &config::max_leases_per_connection,
       "Most leases plus waiting acquires of one connection", 1, u32_max},
      {"max_leases", &config::max_leases, "Most leases held at once, over all connections", 1,
       (1u << 30) - 2},
      {"fencing_block", &config::fencing_block,
       "Fencing tokens reserved per durable write of the state (with state_dir)", 16, 1u << 30},
      {"idle_timeout_ms", &config::idle_timeout_ms,
       "Close connections with no lease, no waiter and no request for this long (0 = never)", 0,
       u32_max},
      {"tcp_keepalive_s", &config::tcp_keepalive_s, "TCP keepalive idle seconds (0 = off)", 0,
       32767},
      {"lock_delay_ms", &config::lock_delay_ms,
       "After a lease is lost (expiry, disconnect), grant nobody the key for this long", 0,
       3'600'000},
      {"shutdown_grace_ms", &config::shutdown_grace_ms,
       "On SIGINT/SIGTERM, time allowed to flush replies before exit", 0, 10'000},
      {"etcd_endpoints", &config::etcd_endpoints,
       "Cluster mode: etcd members, comma-separated URLs (http://HOST:PORT or https://); empty: "
       "standalone"},
      {"etcd_prefix", &config::etcd_prefix, "Cluster mode: etcd key prefix shared by the cluster"},
      {"node_name", &config::node_name,
       "Cluster mode: this daemon's name in inspect and top; empty: the listen address"},
      {"etcd_ca_file", &config::etcd_ca_file, "Cluster mode: CA bundle for TLS to etcd"},
      {"etcd_cert_file", &config::etcd_cert_file,
       "Cluster mode: client certificate for TLS to etcd (with etcd_key_file)"},
      {"etcd_key_file", &config::etcd_key_file, "Cluster mode: client key for TLS to etcd"},
      {"etcd_user", &config::etcd_user, "Cluster mode: etcd user (with etcd_password_file)"},
      {"etcd_password_file", &config::etcd_password_file,
       "Cluster mode: file whose first line is etcd_user's password"},
      {"etcd_lease_ttl_ms", &config::etcd_lease_ttl_ms,
       "Cluster mode: ttl of the daemon's etcd lease (rounded up to seconds); a dead daemon's "
       "keys free up after it, and leases' ttl stays below it",
       2'000, 600'000},
      {"etcd_timeout_ms", &config::etcd_timeout_ms, "Cluster mode: bound of one etcd request", 100,
       60'000},
      {"handoff_limit", &config::handoff_limit,
       "Cluster mode: local grants of a key in a row while another daemon waits for it", 1,
       1'000'000},
      {"idle_keep_ms", &config::idle_keep_ms,
       "Cluster mode: keep the right of a key nobody uses for this long, unless another daemon "
       "asks",
       0, 600'000},
  };
  return rows;
}

std::string flag_of(const char* name) {
  std::string f = std::string("--") + name;
  for (char& c : f) {
    if (c == '_') c = '-';
  }
  return f;
}

}  // namespace

std::optional<std::string> read_auth_file(const std::string& path, std::string& secret) {
  std::ifstream in(path);
  if (!in) return "cannot read auth file " + path;
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  if (line.empty()) return "auth file " + path + " has an empty first line";
  secret = std::move(line);
  return std::nullopt;
}

void clamp_limits(config& c) {
  c.max_unauthenticated_connections =
      std::max<std::uint32_t>(1, std::min(c.max_unauthenticated_connections,
                                          c.max_connections / 2));
}

bool split_host_port(const std::string& s, std::string& host, std::uint16_t& port) {
  std::size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) return false;
  host = s.substr(0, colon);
  if (host.front() == '[') {
    if (host.back() != ']') return false;
    host = host.substr(1, host.size() - 2);
  }
  unsigned long p = 0;
  std::size_t used = 0;
  try {
    p = std::stoul(s.substr(colon + 1), &used);
  } catch (const std::exception&) {
    return false;
  }
  if (used != s.size() - colon - 1 || p > 65535) return false;
  port = static_cast<std::uint16_t>(p);
  return !host.empty();
}

bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

std::optional<std::string> load_config_file(const std::string& path, config& c) {
  std::ifstream in(path);
  if (!in) return "cannot read config file " + path;
  auto doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false, /*comments=*/true);
  if (doc.is_discarded()) return "config file " + path + " is not valid JSON";
  if (!doc.is_object()) return "config file " + path + " must hold a JSON object";
  for (const auto& [key, value] : doc.items()) {
    const setting* row = nullptr;
    for (const setting& s : settings()) {
      if (key == s.name) row = &s;
    }
    if (row == nullptr) return "config file " + path + ": unknown setting '" + key + "'";
    if (const auto* m = std::get_if<str_member>(&row->member)) {
      if (!value.is_string()) return "config file " + path + ": '" + key + "' must be a string";
      c.*(*m) = value.get<std::string>();
    } else {
      if (!value.is_number_unsigned() || value.get<std::uint64_t>() > u32_max) {
        return "config file " + path + ": '" + key + "' must be an integer 0.." +
               std::to_string(u32_max);
      }
      c.*std::get<u32_member>(row->member) = value.get<std::uint32_t>();
    }
  }
  return std::nullopt;
}

std::vector<std::string> etcd_endpoint_list(const std::string& endpoints) {
  std::vector<std::string> out;
  for (std::size_t start = 0; start <= endpoints.size();) {
    std::size_t comma = endpoints.find(',', start);
    if (comma == std::string::npos) comma = endpoints.size();
    out.push_back(endpoints.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::optional<std::string> validate(const config& c) {
  for (const setting& s : settings()) {
    if (const auto* m = std::get_if<u32_member>(&s.member)) {
      std::uint32_t v = c.*(*m);
      if (v < s.min || v > s.max) {
        return std::string(s.name) + " must be " + std::to_string(s.min) + ".." +
               std::to_string(s.max) + ", not " + std::to_string(v);
      }
    }
  }
  if (c.default_ttl_ms > c.max_ttl_ms) return "default_ttl_ms must not exceed max_ttl_ms";
  static const char* const levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  bool level_ok = false;
  for (const char* l : levels) level_ok = level_ok || c.log_level == l;
  if (!level_ok) return "log_level must be one of trace, debug, info, warn, error, critical, off";
  if (c.log_format != "text" && c.log_format != "json") return "log_format must be text or json";
  std::string host;
  std::uint16_t port = 0;
  if (!c.metrics_listen.empty() && !split_host_port(c.metrics_listen, host, port)) {
    return "metrics_listen must be HOST:PORT or empty, not " + c.metrics_listen;
  }
  if (!split_host_port(c.listen, host, port)) return "listen must be HOST:PORT, not " + c.listen;
  if (!c.etcd_endpoints.empty()) {
    for (std::string ep : etcd_endpoint_list(c.etcd_endpoints)) {
      for (const char* scheme : {"http://", "https://"}) {
        if (ep.rfind(scheme, 0) == 0) ep.erase(0, std::string(scheme).size());
      }
      std::string h;
      std::uint16_t p = 0;
      if (!split_host_port(ep, h, p) || p == 0) {
        return "etcd_endpoints must be comma-separated http://HOST:PORT URLs, not " +
               c.etcd_endpoints;
      }
    }
    if (c.etcd_prefix.empty() || c.etcd_prefix.back() != '/') {
      return "etcd_prefix must end with '/', not '" + c.etcd_prefix + "'";
    }
    if (c.etcd_cert_file.empty() != c.etcd_key_file.empty()) {
      return "etcd_cert_file and etcd_key_file go together";
    }
    if (c.etcd_user.empty() != c.etcd_password_file.empty()) {
      return "etcd_user and etcd_password_file go together";
    }
  }
  if (!is_loopback_host(host) && c.auth.empty() && c.users_file.empty()) {
    return "refusing to listen on " + c.listen +
           " without auth: anyone who can reach it could take or break any lock. "
           "Set --auth, --auth-file or --users-file, or listen on 127.0.0.1";
  }
  if (c.metrics_tls != 0) {
    if (c.metrics_listen.empty()) return "metrics_tls needs metrics_listen";
    if (c.tls_cert_file.empty() || c.tls_key_file.empty()) {
      return "metrics_tls needs tls_cert_file and tls_key_file";
    }
  }
  if (c.listen_tls.empty()) {
    if (c.metrics_tls == 0 &&
        (!c.tls_cert_file.empty() || !c.tls_key_file.empty() || !c.tls_ca_file.empty())) {
      return "tls_cert_file, tls_key_file and tls_ca_file need listen_tls or metrics_tls";
    }
    return std::nullopt;
  }
  if (!split_host_port(c.listen_tls, host, port)) {
    return "listen_tls must be HOST:PORT or empty, not " + c.listen_tls;
  }
  if (c.tls_cert_file.empty() || c.tls_key_file.empty()) {
    return "listen_tls needs tls_cert_file and tls_key_file";
  }
  if (!is_loopback_host(host) && c.auth.empty() && c.users_file.empty() &&
      c.tls_ca_file.empty()) {
    return "refusing to listen on " + c.listen_tls +
           " without auth or client certificates: anyone who can reach it could take or break "
           "any lock. Set --auth, --auth-file or --users-file, require client certificates with "
           "--tls-ca-file, or listen on 127.0.0.1";
  }
  return std::nullopt;
}

parse_outcome parse_command_line(int argc, const char* const* argv) {
  parse_outcome out;
  CLI::App app("keylockd: a lock server with FIFO leases, fencing tokens and pushed grants.\n"
               "Settings come from built-in defaults, then --config FILE, then flags.",
               "keylockd");
  std::string config_path;
  bool version = false;
  app.add_option("-c,--config", config_path, "JSON configuration file (see config/keylockd.json)");
  app.add_flag("--version", version, "Print the version and exit");
  app.add_flag("--hash-secret", out.hash_secret,
               "Read a secret from stdin and print its hash for a users_file, then exit");
  app.add_option("--hash-iterations", out.hash_iterations,
                 "PBKDF2 iterations for --hash-secret [default 100000]")
      ->check(CLI::Range(1000u, 10'000'000u));

  config given;
  const config defaults;
  std::vector<CLI::Option*> options;
  for (const setting& s : settings()) {
    std::string help = s.help;
    if (const auto* m = std::get_if<u32_member>(&s.member)) {
      help += " [default " + std::to_string(defaults.*(*m)) + "]";
      options.push_back(app.add_option(flag_of(s.name), given.*(*m), help));
    } else {
      const std::string& def = defaults.*std::get<str_member>(s.member);
      if (!def.empty()) help += " [default " + def + "]";
      options.push_back(app.add_option(flag_of(s.name), given.*std::get<str_member>(s.member), help));
    }
  }

  std::ostringstream text, errors;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    out.what = parse_outcome::action::exit;
    out.exit_code = app.exit(e, text, errors);
    out.output = out.exit_code == 0 ? text.str() : errors.str();
    return out;
  }
  if (version) {
    out.what = parse_outcome::action::exit;
    out.output = std::string("keylockd ") + KEYLOCK_VERSION + "\n";
    return out;
  }
  if (out.hash_secret) return out;  // main reads the secret

  config c;
  auto fail = [&out](std::string message) {
    out.what = parse_outcome::action::exit;
    out.exit_code = 2;
    out.output = "keylockd: " + std::move(message) + "\n";
    return out;
  };
  if (!config_path.empty()) {
    if (auto err = load_config_file(config_path, c)) return fail(*err);
  }
  for (std::size_t i = 0; i < options.size(); ++i) {
    if (options[i]->count() == 0) continue;
    std::visit([&](auto member) { c.*member = given.*member; }, settings()[i].member);
  }
  if (!c.auth_file.empty()) {
    if (auto err = read_auth_file(c.auth_file, c.auth)) return fail(*err);
  }
  if (auto err = validate(c)) return fail(*err);
  clamp_limits(c);
  out.settings = std::move(c);
  return out;
}

}  // namespace keylock
