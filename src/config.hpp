// keylockd's settings: one plain struct with documented defaults, loaded from a JSON file
// (config/keylockd.json) and overridden by command-line flags, then checked once at start-up.
//
// Every setting has one row in the settings table in config.cpp, which drives the JSON keys,
// the flags (`--max-key-bytes` for `max_key_bytes`), the help text and the range checks, so
// the three can never disagree.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace keylock {

struct config {
  // Where the lock protocol listens: "HOST:PORT" (port 0 = ephemeral, for tests).
  std::string listen = "127.0.0.1:7400";
  // Directory for durable state (the fencing token high-water mark). Empty: none.
  std::string state_dir;
  // Shared secret clients must present in `hello`. Never logged.
  std::string auth;
  // File holding the secret (first line); alternative to `auth`, which it overrides.
  std::string auth_file;
  // Users, their hashed secrets and key ACLs (PROTOCOL.md "Users and access control"; README
  // "Users and ACLs"). Empty: none. Clients must then log in (hello with user, or a client
  // certificate a user claims); `auth`, when also set, still logs in with every permission.
  std::string users_file;
  // trace, debug, info, warn, error, critical, off.
  std::string log_level = "info";
  // text (human-readable lines) or json (one JSON object per line, for log shippers).
  std::string log_format = "text";
  // Where the HTTP listener serves /metrics, /healthz and /readyz. Empty: no listener.
  std::string metrics_listen = "127.0.0.1:7401";
  // TLS (README "TLS"): a second listener for the lock protocol over TLS, "HOST:PORT"; empty:
  // none. It needs tls_cert_file and tls_key_file (PEM; the certificate file may hold the
  // chain). With tls_ca_file, clients must present a certificate signed by one of its CAs
  // (mutual TLS); then the TLS listener may bind a public address without `auth`. SIGHUP
  // re-reads the three files: new connections use them, open ones keep theirs.
  std::string listen_tls;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;

  std::uint32_t max_connections = 16384;       // beyond: limit_exceeded, then close
  std::uint32_t max_frame_bytes = 65536;       // one request line; beyond: frame_too_large
  std::uint32_t max_key_bytes = 1024;          // key length in bytes
  std::uint32_t default_ttl_ms = 30000;        // acquire without ttl_ms
  std::uint32_t max_ttl_ms = 3'600'000;        // largest ttl_ms accepted
  std::uint32_t max_wait_ms = 86'400'000;      // largest wait_ms accepted
  std::uint32_t max_limit = 1024;              // largest semaphore limit accepted
  std::uint32_t max_keys = 1u << 20;           // live keys; beyond: limit_exceeded
  std::uint32_t max_waiters_per_key = 10000;   // queued acquires on one key
  std::uint32_t max_pending_per_connection = 4096;  // queued acquires of one connection
  std::uint32_t max_output_bytes = 1u << 20;   // unsent reply bytes before a slow reader is cut
  std::uint32_t write_timeout_ms = 10'000;     // unsent replies making no progress this long: close
  std::uint32_t auth_timeout_ms = 5'000;       // with auth: time to complete hello, else close
  // With auth: connections that have not completed hello, at most; the oldest is closed to make
  // room for a new one. Clamped at start-up to half of max_connections (at least 1).
  std::uint32_t max_unauthenticated_connections = 256;
  std::uint32_t max_leases_per_connection = 65536;  // leases + waiting acquires of one connection
  std::uint32_t max_leases = 1u << 24;         // leases held at once, over all connections
  std::uint32_t fencing_block = 1u << 20;      // tokens per durable reservation (with state_dir)
  std::uint32_t idle_timeout_ms = 300'000;     // close connections idle this long (0 = never)
  std::uint32_t tcp_keepalive_s = 60;          // TCP keepalive idle time (0 = off)
  std::uint32_t lock_delay_ms = 0;             // see PROTOCOL.md "Lock delay"
  std::uint32_t shutdown_grace_ms = 500;       // time to flush replies on SIGTERM before exit
  std::uint32_t tls_handshake_timeout_ms = 5'000;  // a TLS handshake not done by then: close
  // 1: the metrics port serves HTTPS with tls_cert_file and tls_key_file (and, with
  // tls_ca_file, asks scrapers for a client certificate). 0: plain HTTP.
  std::uint32_t metrics_tls = 0;

  // Cluster mode (PROTOCOL.md "Cluster mode", README "Cluster mode"). Empty etcd_endpoints:
  // standalone, exactly as without these settings.
  std::string etcd_endpoints;                  // "http://h1:2379,http://h2:2379"
  std::string etcd_prefix = "/keylock/";       // every daemon of one cluster uses the same
  std::string node_name;                       // shown by inspect and top; empty: the listen address
  std::string etcd_ca_file;                    // TLS to etcd: CA bundle (https:// endpoints)
  std::string etcd_cert_file;                  // TLS client certificate, with etcd_key_file
  std::string etcd_key_file;
  std::string etcd_user;                       // etcd authentication (with etcd_password_file)
  std::string etcd_password_file;              // first line: etcd_user's password
  std::uint32_t etcd_lease_ttl_ms = 10'000;    // the daemon's etcd lease (whole seconds)
  std::uint32_t etcd_timeout_ms = 2'000;       // bound of one etcd request
  std::uint32_t handoff_limit = 64;            // local grants in a row while another daemon waits
  std::uint32_t idle_keep_ms = 500;            // keep an unused key's right this long
};

// What parse_command_line decided.
struct parse_outcome {
  enum class action { run, exit };
  action what = action::run;
  int exit_code = 0;     // for action::exit
  std::string output;    // for action::exit: text for stdout (help, version) or stderr (error)
  config settings;
  // --hash-secret: print the users_file hash of the secret read from stdin, then exit.
  bool hash_secret = false;
  std::uint32_t hash_iterations = 0;  // 0: the default
};

// Builds the configuration: built-in defaults, then the file named by --config (if any), then
// every flag given. Help, version and errors come back as action::exit with the text to print.
// Errors: unknown flag, bad value, unreadable or invalid config file, unknown key in it, a
// value outside its range, unreadable auth file, non-loopback listen without auth.
parse_outcome parse_command_line(int argc, const char* const* argv);

// Checks ranges and cross-field rules; returns the first problem, or nullopt.
std::optional<std::string> validate(const config& c);

// Applies the limits that depend on other limits (max_unauthenticated_connections is at most
// half of max_connections, and at least 1). Called once at start-up, after validate().
void clamp_limits(config& c);

// Reads the shared secret from the first line of `path` (trailing spaces and CR dropped) into
// `secret`. Returns an error message when the file is unreadable or its first line is empty;
// `secret` is then unchanged.
std::optional<std::string> read_auth_file(const std::string& path, std::string& secret);

// Loads `path` (a JSON object of setting names) over `c`. Returns an error message or nullopt.
std::optional<std::string> load_config_file(const std::string& path, config& c);

// The members of etcd_endpoints, split at commas, as given (URLs or HOST:PORT).
std::vector<std::string> etcd_endpoint_list(const std::string& endpoints);

// Splits "host:port" ("[v6]:port" allowed). False when malformed.
bool split_host_port(const std::string& s, std::string& host, std::uint16_t& port);

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(const std::string& host);

}  // namespace keylock
