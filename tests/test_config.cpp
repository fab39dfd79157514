// Configuration: defaults, file, flags, and the checks made once at start-up.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "config.hpp"

using namespace keylock;

namespace {

parse_outcome parse(std::vector<std::string> args) {
  args.insert(args.begin(), "keylockd");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_command_line(static_cast<int>(argv.size()), argv.data());
}

std::string temp_file(const std::string& content) {
  char name[] = "/tmp/keylock-config-XXXXXX";
  int fd = ::mkstemp(name);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
  ::close(fd);
  return name;
}

}  // namespace

TEST_CASE("the shipped config file holds exactly the built-in defaults", "[config]") {
  config from_file;
  from_file.listen = "changed";  // proves the file sets it back
  REQUIRE_FALSE(load_config_file(KEYLOCK_SOURCE_DIR "/config/keylockd.json", from_file));
  config defaults;
  REQUIRE(from_file.listen == defaults.listen);
  REQUIRE(from_file.max_frame_bytes == defaults.max_frame_bytes);
  REQUIRE(from_file.max_keys == defaults.max_keys);
  REQUIRE(from_file.idle_timeout_ms == defaults.idle_timeout_ms);
  REQUIRE(from_file.max_output_bytes == defaults.max_output_bytes);
  REQUIRE(from_file.max_pending_per_connection == defaults.max_pending_per_connection);
  REQUIRE(from_file.lock_delay_ms == defaults.lock_delay_ms);
  REQUIRE(from_file.max_ttl_ms == defaults.max_ttl_ms);
  REQUIRE(from_file.metrics_listen == defaults.metrics_listen);
  REQUIRE(from_file.log_format == defaults.log_format);
  REQUIRE(from_file.write_timeout_ms == defaults.write_timeout_ms);
  REQUIRE(from_file.auth_timeout_ms == defaults.auth_timeout_ms);
  REQUIRE(from_file.max_unauthenticated_connections == defaults.max_unauthenticated_connections);
  REQUIRE(from_file.max_leases_per_connection == defaults.max_leases_per_connection);
  REQUIRE(from_file.max_leases == defaults.max_leases);
  REQUIRE(from_file.fencing_block == defaults.fencing_block);
}

TEST_CASE("flags override the config file, which overrides the defaults", "[config]") {
  std::string path = temp_file(R"({"max_key_bytes": 64, "lock_delay_ms": 250})");
  auto out = parse({"--config", path, "--max-key-bytes", "32"});
  std::remove(path.c_str());
  REQUIRE(out.what == parse_outcome::action::run);
  REQUIRE(out.settings.max_key_bytes == 32);
  REQUIRE(out.settings.lock_delay_ms == 250);
  REQUIRE(out.settings.max_frame_bytes == config{}.max_frame_bytes);
}

TEST_CASE("a bad config file is refused with a message naming the problem", "[config]") {
  SECTION("unknown key") {
    std::string path = temp_file(R"({"max_kyes": 5})");
    auto out = parse({"--config", path});
    std::remove(path.c_str());
    REQUIRE(out.exit_code != 0);
    REQUIRE(out.output.find("max_kyes") != std::string::npos);
  }
  SECTION("wrong type") {
    std::string path = temp_file(R"({"max_keys": "many"})");
    auto out = parse({"--config", path});
    std::remove(path.c_str());
    REQUIRE(out.exit_code != 0);
    REQUIRE(out.output.find("max_keys") != std::string::npos);
  }
  SECTION("not JSON") {
    std::string path = temp_file("max_keys = 5");
    auto out = parse({"--config", path});
    std::remove(path.c_str());
    REQUIRE(out.exit_code != 0);
  }
  SECTION("missing file") {
    auto out = parse({"--config", "/nonexistent/keylockd.json"});
    REQUIRE(out.exit_code != 0);
  }
}

TEST_CASE("values outside their range are refused at start-up", "[config]") {
  auto out = parse({"--max-frame-bytes", "10"});
  REQUIRE(out.what == parse_outcome::action::exit);
  REQUIRE(out.exit_code != 0);
  REQUIRE(out.output.find("max_frame_bytes") != std::string::npos);
  out = parse({"--default-ttl-ms", "5000", "--max-ttl-ms", "1000"});
  REQUIRE(out.exit_code != 0);
  out = parse({"--log-level", "loud"});
  REQUIRE(out.exit_code != 0);
  out = parse({"--log-format", "xml"});
  REQUIRE(out.exit_code != 0);
  out = parse({"--metrics-listen", "nope"});
  REQUIRE(out.exit_code != 0);
  REQUIRE(parse({"--metrics-listen", ""}).what == parse_outcome::action::run);
}

TEST_CASE("a non-loopback listen address without auth is refused with the reason", "[config]") {
  auto out = parse({"--listen", "0.0.0.0:7400"});
  REQUIRE(out.exit_code != 0);
  REQUIRE(out.output.find("without auth") != std::string::npos);
  out = parse({"--listen", "0.0.0.0:7400", "--auth", "s3cret"});
  REQUIRE(out.what == parse_outcome::action::run);
  REQUIRE(parse({"--listen", "[::1]:7400"}).what == parse_outcome::action::run);
  REQUIRE(parse({"--listen", "127.0.0.2:0"}).what == parse_outcome::action::run);
}

TEST_CASE("TLS settings go together, and client certificates allow a public TLS bind", "[config]") {
  // The files are read when the daemon starts listening, not here.
  const std::vector<std::string> files = {"--tls-cert-file", "s.pem", "--tls-key-file", "s.key"};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), files.begin(), files.end());
    return args;
  };
  REQUIRE(parse(with({"--listen-tls", "127.0.0.1:7443"})).what == parse_outcome::action::run);
  auto out = parse({"--listen-tls", "127.0.0.1:7443"});
  REQUIRE(out.exit_code != 0);
  REQUIRE(out.output.find("needs tls_cert_file and tls_key_file") != std::string::npos);
  out = parse({"--tls-cert-file", "s.pem", "--tls-key-file", "s.key"});
  REQUIRE(out.exit_code != 0);
  REQUIRE(out.output.find("need listen_tls") != std::string::npos);
  REQUIRE(parse(with({"--listen-tls", "nope"})).exit_code != 0);
  out = parse(with({"--listen-tls", "0.0.0.0:7443"}));
  REQUIRE(out.exit_code != 0);
  REQUIRE(out.output.find("without auth or client certificates") != std::string::npos);
  REQUIRE(parse(with({"--listen-tls", "0.0.0.0:7443", "--tls-ca-file", "ca.pem"})).what ==
          parse_outcome::action::run);
  REQUIRE(parse(with({"--listen-tls", "0.0.0.0:7443", "--auth", "s3cret"})).what ==
          parse_outcome::action::run);
  // Client certificates open the TLS port only: the plain one still needs the secret.
  REQUIRE(parse(with({"--listen", "0.0.0.0:7400", "--listen-tls", "0.0.0.0:7443", "--tls-ca-file",
                      "ca.pem"}))
              .exit_code != 0);
}

TEST_CASE("metrics_tls needs the certificate and key, and a users_file allows a public bind",
          "[config]") {
  REQUIRE(parse({"--metrics-tls", "1", "--tls-cert-file", "s.pem", "--tls-key-file", "s.key"}).what ==
          parse_outcome::action::run);
  auto out = parse({"--metrics-tls", "1"});
  REQUIRE(out.exit_code != 0);
  REQUIRE(out.output.find("metrics_tls needs tls_cert_file and tls_key_file") != std::string::npos);
  out = parse({"--metrics-tls", "1", "--metrics-listen", "", "--tls-cert-file", "s.pem",
               "--tls-key-file", "s.key"});
  REQUIRE(out.output.find("metrics_tls needs metrics_listen") != std::string::npos);
  REQUIRE(parse({"--metrics-tls", "2"}).exit_code != 0);
  // The users_file is read when the daemon starts, not here.
  REQUIRE(parse({"--listen", "0.0.0.0:7400", "--users-file", "users.json"}).what ==
          parse_outcome::action::run);
  REQUIRE(parse({"--listen", "0.0.0.0:7400"}).exit_code != 0);
}

TEST_CASE("the auth file's first line is the secret", "[config]") {
  std::string path = temp_file("hunter2\nignored\n");
  auto out = parse({"--auth-file", path});
  std::remove(path.c_str());
  REQUIRE(out.what == parse_outcome::action::run);
  REQUIRE(out.settings.auth == "hunter2");
  REQUIRE(parse({"--auth-file", "/nonexistent/secret"}).exit_code != 0);
}

TEST_CASE("unknown flags and malformed values exit non-zero", "[config]") {
  REQUIRE(parse({"--no-such-flag"}).exit_code != 0);
  REQUIRE(parse({"--max-keys", "lots"}).exit_code != 0);
  REQUIRE(parse({"--listen", "nohostport"}).exit_code != 0);
}

TEST_CASE("help lists every setting's flag", "[config]") {
  auto out = parse({"--help"});
  REQUIRE(out.what == parse_outcome::action::exit);
  REQUIRE(out.exit_code == 0);
  for (const char* flag : {"--listen", "--state-dir", "--auth", "--auth-file", "--log-level",
                           "--max-connections", "--max-frame-bytes", "--lock-delay-ms",
                           "--idle-timeout-ms", "--max-output-bytes", "--config"}) {
    INFO(flag);
    REQUIRE(out.output.find(flag) != std::string::npos);
  }
}

TEST_CASE("unauthenticated connections are clamped to half of max_connections at start-up",
          "[config]") {
  auto small = parse({"--max-connections", "20"});
  REQUIRE(small.what == parse_outcome::action::run);
  REQUIRE(small.settings.max_unauthenticated_connections == 10);
  auto one = parse({"--max-connections", "1"});
  REQUIRE(one.settings.max_unauthenticated_connections == 1);
  auto kept = parse({"--max-unauthenticated-connections", "7"});
  REQUIRE(kept.settings.max_unauthenticated_connections == 7);
}

TEST_CASE("the new deadlines and lease bounds are range-checked", "[config]") {
  for (const char* flag : {"--write-timeout-ms", "--auth-timeout-ms"}) {
    auto out = parse({flag, "5"});
    INFO(flag);
    REQUIRE(out.what == parse_outcome::action::exit);
    REQUIRE(out.exit_code == 2);
  }
  REQUIRE(parse({"--max-leases", "0"}).exit_code == 2);
  REQUIRE(parse({"--max-leases-per-connection", "0"}).exit_code == 2);
  REQUIRE(parse({"--fencing-block", "8"}).exit_code == 2);
}

TEST_CASE("read_auth_file keeps the secret when the file's first line is empty", "[config]") {
  std::string path = temp_file("\nsecond line\n");
  std::string secret = "before";
  auto err = read_auth_file(path, secret);
  std::remove(path.c_str());
  REQUIRE(err.has_value());
  REQUIRE(secret == "before");
}
