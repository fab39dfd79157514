// The client and the CLI over TLS, and with per-user credentials (issue 15), against the real
// keylockd's TLS port (listen_tls) and users file.
//
// The certificates are made once per run by the openssl command in a temporary directory that
// is removed at exit (no key is ever committed): a CA, a CA the daemon does not trust, a server
// certificate for localhost and 127.0.0.1, and a client certificate for mutual TLS.
//
// The users-file cases need a keylockd with --users-file; with an older one they pass with a
// warning saying they were skipped.
#include "harness.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <csignal>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using keylock::test::child_process;
using keylock::test::options_for;
using keylock::test::temp_dir;
using keylock::test::wait_until;
using keylock_daemon = keylock::test::daemon;

namespace {

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// `openssl ARGS...`, run to completion; throws with its stderr when it fails.
void openssl(const temp_dir& dir, std::vector<std::string> args) {
  args.insert(args.begin(), "openssl");
  child_process run(dir, args);
  const std::optional<int> status = run.wait();
  if (status != 0) throw std::runtime_error("openssl " + args.at(1) + " failed: " + run.err());
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// The run's certificates: NAME.pem and NAME.key in one temporary directory.
class test_certs {
 public:
  test_certs() {
    for (const char* ca : {"ca", "other_ca"}) {
      openssl(dir_, {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", key(ca), "-out", pem(ca), "-days", "2", "-subj",
                     std::string("/CN=keylock client test ") + ca});
    }
    issue("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    issue("client", "extendedKeyUsage=clientAuth\n");
  }

  std::string pem(const std::string& name) const { return dir_.file(name + ".pem"); }
  std::string key(const std::string& name) const { return dir_.file(name + ".key"); }
  const temp_dir& dir() const { return dir_; }

 private:
  // A key and a certificate for `name`, signed by "ca", with `extensions`.
  void issue(const std::string& name, const std::string& extensions) {
    const std::string csr = dir_.file(name + ".csr");
    const std::string ext = dir_.file(name + ".ext");
    write_file(ext, extensions);
    openssl(dir_, {"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", key(name), "-out", csr, "-subj", "/CN=" + name});
    openssl(dir_, {"x509", "-req", "-in", csr, "-CA", pem("ca"), "-CAkey", key("ca"),
                   "-CAcreateserial", "-out", pem(name), "-days", "2", "-extfile", ext});
  }

  temp_dir dir_;
};

// Made on first use, removed when the test program exits.
const test_certs& certs() {
  static const test_certs made;
  return made;
}

enum class client_certs : std::uint8_t { optional, required };

// keylockd arguments for a TLS port on 127.0.0.1 (`port` 0: any), with mutual TLS when
// client certificates are required. The plain port is named too: the harness takes any
// argument that starts with --listen for one (and would leave the daemon on 7400).
std::vector<std::string> tls_args(client_certs clients = client_certs::optional,
                                  std::uint16_t port = 0) {
  std::vector<std::string> args = {"--listen",        "127.0.0.1:0",
                                   "--listen-tls",    "127.0.0.1:" + std::to_string(port),
                                   "--tls-cert-file", certs().pem("server"),
                                   "--tls-key-file",  certs().key("server")};
  if (clients == client_certs::required) {
    args.insert(args.end(), {"--tls-ca-file", certs().pem("ca")});
  }
  return args;
}

// The daemon's TLS port, from its start log line ("TLS on 127.0.0.1:PORT").
std::uint16_t tls_port(const keylock_daemon& d) {
  const std::string marker = "TLS on 127.0.0.1:";
  REQUIRE(d.wait_log(marker));
  const std::string log = d.log();
  return static_cast<std::uint16_t>(std::stoi(log.substr(log.find(marker) + marker.size())));
}

// Client options for the TLS port `port`, trusting the test CA.
keylock::client_options tls_options(std::uint16_t port, const std::string& host = "127.0.0.1") {
  keylock::client_options options = options_for(port, "tls-test");
  options.server = host + ":" + std::to_string(port);
  options.tls.enabled = std::nullopt;  // enabled by the CA file, as documented
  options.tls.ca_file = certs().pem("ca");
  return options;
}

keylock::AcquireOptions bounded() {
  keylock::AcquireOptions options;
  options.wait = keylock::test::event_bound;
  return options;
}

// The message of the ConnectionError that constructing a Client with `options` throws; fails
// the test when it throws something else or nothing.
std::string connection_error(const keylock::client_options& options) {
  try {
    keylock::Client client(options);
  } catch (const keylock::ConnectionError& e) {
    return e.what();
  }
  FAIL("no ConnectionError");
  return "";
}

// `keylock ARGS...`
std::vector<std::string> cli(std::vector<std::string> args) {
  args.insert(args.begin(), KEYLOCK_CLI_PATH);
  return args;
}

// ---- users ------------------------------------------------------------------------------------

// Whether this keylockd takes --users-file (landing with issue 15's daemon side).
bool daemon_has_users() {
  temp_dir dir;
  child_process help(dir, {KEYLOCKD_PATH, "--help"});
  help.wait();
  return contains(help.out() + help.err(), "users-file");
}

std::string base64(const unsigned char* data, std::size_t size) {
  std::string out(4 * ((size + 2) / 3) + 1, '\0');
  const int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(size));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// A users-file secret entry for `secret`: pbkdf2-sha256$ITER$SALT_B64$HASH_B64.
std::string hashed_secret(const std::string& secret) {
  constexpr int iterations = 1000;  // low: a test, not a password store
  std::array<unsigned char, 16> salt{};
  std::array<unsigned char, 32> hash{};
  REQUIRE(RAND_bytes(salt.data(), static_cast<int>(salt.size())) == 1);
  REQUIRE(PKCS5_PBKDF2_HMAC(secret.data(), static_cast<int>(secret.size()), salt.data(),
                            static_cast<int>(salt.size()), iterations, EVP_sha256(),
                            static_cast<int>(hash.size()), hash.data()) == 1);
  return "pbkdf2-sha256$" + std::to_string(iterations) + "$" + base64(salt.data(), salt.size()) +
         "$" + base64(hash.data(), hash.size());
}

// A users file in `dir`: "billing" may lock and inspect billing:*, "ops" may do everything.
// With `billing_subject`, a client certificate with that subject logs in as "billing".
std::string users_file(const temp_dir& dir, const std::string& billing_subject = "") {
  std::string path = dir.file("users.json");
  const std::string subject =
      billing_subject.empty() ? "" : R"(,"cert_subject":")" + billing_subject + R"(")";
  write_file(path, R"({"users":[)"
                   R"({"name":"billing","secret":")" +
                       hashed_secret("billing-secret") + R"(")" + subject +
                       R"(,"rules":[{"prefix":"billing:","allow":["lock","inspect"]}]},)"
                       R"({"name":"ops","secret":")" +
                       hashed_secret("ops-secret") +
                       R"(","rules":[{"prefix":"","allow":["lock","inspect","admin"]}]}]})");
  return path;
}

keylock::client_options as_user(keylock::client_options options, const std::string& user,
                                const std::string& secret) {
  options.user = user;
  options.auth = secret;
  return options;
}

// Returns from the test case, passing with a warning, when keylockd has no users file.
#define SKIP_WITHOUT_USERS()                                                                    \
  do {                                                                                          \
    if (!daemon_has_users()) {                                                                  \
      WARN("skipped: this keylockd has no --users-file (issue 15's daemon side not built in)"); \
      return;                                                                                   \
    }                                                                                           \
  } while (false)

// One accepted connection on a loopback port of our own: sees what a client sends.
class fake_daemon {
 public:
  fake_daemon() {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener_, 1) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::runtime_error("fake_daemon: cannot listen");
    }
    port_ = ntohs(addr.sin_port);
  }
  ~fake_daemon() {
    if (conn_ >= 0) ::close(conn_);
    ::close(listener_);
  }
  fake_daemon(const fake_daemon&) = delete;
  fake_daemon& operator=(const fake_daemon&) = delete;

  std::uint16_t port() const { return port_; }

  // The first line the client sends, without its newline; empty on timeout.
  std::string first_line() {
    pollfd ready{listener_, POLLIN, 0};
    if (::poll(&ready, 1, static_cast<int>(keylock::test::event_bound.count())) != 1) return "";
    conn_ = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    std::string line;
    char c = 0;
    pollfd in{conn_, POLLIN, 0};
    while (::poll(&in, 1, static_cast<int>(keylock::test::event_bound.count())) == 1 &&
           ::recv(conn_, &c, 1, 0) == 1 && c != '\n') {
      line += c;
    }
    return line;
  }

  // Ends the connection (the client's constructor then fails).
  void hang_up() {
    if (conn_ >= 0) ::close(conn_);
    conn_ = -1;
  }

 private:
  int listener_ = -1;
  int conn_ = -1;
  std::uint16_t port_ = 0;
};

}  // namespace

// ---- TLS ------------------------------------------------------------------------------------

TEST_CASE("over TLS a client verifies the daemon's certificate, then locks as over TCP",
          "[client][tls]") {
  keylock_daemon d(tls_args());
  const std::uint16_t port = tls_port(d);

  SECTION("the server named by its IP address") {
    keylock::Client client(tls_options(port));
    keylock::Lease lease = client.acquire("tls:k", bounded());
    CHECK(lease.valid());
    CHECK(client.inspect("tls:k").held);
    lease.release();
    CHECK_FALSE(client.locked("tls:k"));
    CHECK(client.ping() > 0ns);
  }
  SECTION("the server named by a host name (SNI and name check)") {
    keylock::Client client(tls_options(port, "localhost"));
    keylock::Lease lease = client.acquire("tls:k", bounded());
    CHECK(lease.owned());
    lease.release();
  }
  SECTION("tls.enabled false speaks plain TCP, even with a CA file given") {
    keylock::client_options options = tls_options(d.port());
    options.tls.enabled = false;
    keylock::Client client(options);
    CHECK(client.ping() > 0ns);
  }
  SECTION("tls.server_name names the certificate when the address does not") {
    keylock::client_options options = tls_options(port);
    options.tls.server_name = "localhost";
    keylock::Client client(options);
    CHECK(client.stats().connections >= 1);
  }
}

TEST_CASE("over TLS replies longer than a TLS record and bursts that fill the socket arrive whole",
          "[client][tls]") {
  keylock_daemon d(tls_args());
  keylock::Client client(tls_options(tls_port(d)));

  SECTION("an inspect of many holders spans several records") {
    keylock::AcquireOptions options = bounded();
    options.limit = 400;
    std::vector<keylock::Lease> leases;
    leases.reserve(400);
    for (int i = 0; i < 400; ++i) leases.push_back(client.acquire("tls:many", options));
    const keylock::key_info info = client.inspect("tls:many");  // about 60 KB of JSON
    CHECK(info.holders.size() == 400);
    for (auto& lease : leases) lease.release(keylock::release_mode::no_reply);
    CHECK(client.inspect("tls:many").holders.empty());
  }
  SECTION("a burst of acquires with long keys, written while the daemon is stopped, completes") {
    // 8 MB of requests while the daemon reads nothing: the socket fills, and the rest waits
    // in the client for the socket to drain (SSL_write's want_write).
    constexpr int count = 8000;
    REQUIRE(::kill(d.pid(), SIGSTOP) == 0);
    std::atomic<int> done{0};
    std::atomic<int> failed{0};
    std::mutex mutex;
    std::vector<keylock::Lease> leases;
    for (int i = 0; i < count; ++i) {
      std::string key = "tls:" + std::to_string(i) + ":" + std::string(1000, 'x');
      client.start_acquire({std::move(key)}, false, bounded(),
                           [&](const std::exception_ptr& error, keylock::Lease lease) {
                             if (error) {
                               ++failed;
                             } else {
                               std::lock_guard lock(mutex);
                               leases.push_back(std::move(lease));
                             }
                             ++done;
                           });
    }
    REQUIRE(::kill(d.pid(), SIGCONT) == 0);
    REQUIRE(wait_until([&] { return done.load() == count; }));
    CHECK(failed.load() == 0);
    std::lock_guard lock(mutex);
    for (auto& lease : leases) lease.release(keylock::release_mode::no_reply);
    CHECK(client.stats().held == 0);
  }
  SECTION("threads sharing one client over TLS") {
    std::atomic<int> granted{0};
    std::vector<std::thread> threads;
    threads.reserve(4);
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 100; ++i) {
          client.with_lock(
              "tls:thread:" + std::to_string(t), [&] { ++granted; }, bounded());
        }
      });
    }
    for (auto& thread : threads) thread.join();
    CHECK(granted.load() == 400);
  }
}

TEST_CASE("mutual TLS: a client certificate is accepted, a missing one is a ConnectionError",
          "[client][tls]") {
  keylock_daemon d(tls_args(client_certs::required));
  const std::uint16_t port = tls_port(d);

  SECTION("with the client certificate") {
    keylock::client_options options = tls_options(port);
    options.tls.cert_file = certs().pem("client");
    options.tls.key_file = certs().key("client");
    keylock::Client client(options);
    keylock::Lease lease = client.acquire("mtls:k", bounded());
    CHECK(lease.valid());
    lease.release();
  }
  SECTION("without one") {
    const std::string message = connection_error(tls_options(port));
    INFO(message);
    CHECK(contains(message, "TLS"));
    CHECK(contains(message, "certificate"));
  }
  SECTION("a key that is not the certificate's is refused at construction") {
    keylock::client_options options = tls_options(port);
    options.tls.cert_file = certs().pem("client");
    options.tls.key_file = certs().key("server");
    CHECK_THROWS_AS(keylock::Client(options), std::invalid_argument);
  }
}

TEST_CASE("a failed TLS handshake is a ConnectionError that says TLS and why, not a hang",
          "[client][tls]") {
  keylock_daemon d(tls_args());
  const std::uint16_t port = tls_port(d);
  keylock::client_options options = tls_options(port);

  SECTION("a CA that did not sign the daemon's certificate") {
    options.tls.ca_file = certs().pem("other_ca");
    const std::string message = connection_error(options);
    INFO(message);
    CHECK(contains(message, "TLS handshake"));
    CHECK(contains(message, "certificate verify failed"));
  }
  SECTION("a server name the certificate does not carry") {
    options.tls.server_name = "elsewhere.example";
    const std::string message = connection_error(options);
    INFO(message);
    CHECK(contains(message, "TLS handshake"));
    CHECK(contains(message, "hostname mismatch"));
  }
  SECTION("an IP address the certificate does not carry") {
    options.tls.server_name = "127.0.0.2";
    const std::string message = connection_error(options);
    INFO(message);
    CHECK(contains(message, "IP address mismatch"));
  }
  SECTION("TLS to the plain port") {
    options.server = "127.0.0.1:" + std::to_string(d.port());
    const std::string message = connection_error(options);
    INFO(message);
    CHECK(contains(message, "TLS handshake"));
  }
  SECTION("a CA file that does not exist is refused at construction") {
    options.tls.ca_file = certs().dir().file("missing.pem");
    CHECK_THROWS_AS(keylock::Client(options), std::invalid_argument);
  }
}

TEST_CASE("a Client on the caller's io_context speaks TLS", "[client][tls][on_io]") {
  keylock_daemon d(tls_args());
  boost::asio::io_context io;
  keylock::Client client(io, tls_options(tls_port(d)));

  std::atomic<bool> done{false};
  std::optional<keylock::Lease> by_callback;
  std::exception_ptr callback_error;
  client.start_acquire({"io:a"}, false, bounded(),
                       [&](std::exception_ptr error, keylock::Lease lease) {
                         callback_error = std::move(error);
                         by_callback = std::move(lease);
                       });
  std::optional<keylock::key_info> seen;
  std::thread caller([&] {  // a blocking call from another thread while io runs
    keylock::Lease lease = client.acquire("io:b", bounded());
    seen = client.inspect("io:b");
    lease.release();
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + keylock::test::event_bound;
  while (!(done && by_callback) && std::chrono::steady_clock::now() < deadline) {
    io.run_for(10ms);
    io.restart();
  }
  caller.join();
  REQUIRE(done);
  REQUIRE(by_callback);
  CHECK_FALSE(callback_error);
  CHECK(by_callback->valid());
  CHECK(seen->held);
  by_callback->release(keylock::release_mode::no_reply);
}

TEST_CASE("after the daemon restarts the client reconnects over TLS", "[client][tls]") {
  const std::uint16_t port = keylock::test::free_port();
  keylock_daemon d(tls_args(client_certs::optional, port));
  REQUIRE(tls_port(d) == port);
  keylock::test::lost_log lost;
  keylock::Client client(tls_options(port));
  keylock::AcquireOptions options = bounded();
  options.on_lost = lost.callback();
  keylock::Lease before = client.acquire("restart:k", options);

  d.restart();
  // The daemon dropped the connection: the lease is lost, then the client connects again
  // (TLS only: this port speaks nothing else).
  REQUIRE(wait_until([&] { return lost.count() == 1; }));
  CHECK(lost.first().reason == keylock::lost_reason::connection_lost);
  keylock::Lease after = client.acquire("restart:k", bounded());
  CHECK(after.valid());
  CHECK(after.token() != before.token());
  after.release();
}

TEST_CASE("failover across a list of TLS daemons", "[client][tls]") {
  keylock_daemon first(tls_args());
  keylock_daemon second(tls_args());
  const std::string second_address = "127.0.0.1:" + std::to_string(tls_port(second));
  keylock::client_options options = tls_options(tls_port(first));
  options.server += "," + second_address;
  keylock::Client client(options);
  CHECK(client.acquire("fail:k", bounded()).valid());
  first.stop();
  REQUIRE(wait_until([&] {
    try {
      keylock::Lease lease = client.acquire("fail:k", bounded());
      return client.server() == second_address;
    } catch (const keylock::ConnectionError&) {
      return false;  // between the two daemons
    }
  }));
}

TEST_CASE("keylock run over TLS, from flags and from the environment", "[client][tls][cli]") {
  keylock_daemon d(tls_args());
  const std::string server = "127.0.0.1:" + std::to_string(tls_port(d));
  temp_dir dir;

  SECTION("--tls-ca") {
    child_process run(dir, cli({"--server", server, "--tls-ca", certs().pem("ca"), "run", "cli:k",
                                "--", "sh", "-c", "test -n \"$KEYLOCK_TOKEN\""}));
    INFO(run.err());
    CHECK(run.wait() == 0);
  }
  SECTION("$KEYLOCK_TLS_CA") {
    child_process run(dir, cli({"run", "cli:k", "--", "true"}),
                      {"KEYLOCK_SERVER=" + server, "KEYLOCK_TLS_CA=" + certs().pem("ca")});
    INFO(run.err());
    CHECK(run.wait() == 0);
  }
  SECTION("a CA that did not sign the daemon's certificate exits 69 and says why") {
    child_process run(dir, cli({"--server", server, "--tls-ca", certs().pem("other_ca"), "run",
                                "cli:k", "--", "true"}));
    CHECK(run.wait() == 69);
    CHECK(contains(run.err(), "TLS handshake"));
  }
}

// ---- users ------------------------------------------------------------------------------------

TEST_CASE("hello carries the user beside its secret", "[client][users]") {
  fake_daemon fake;
  keylock::client_options options = options_for(fake.port());
  options.user = "bill\"ing";
  options.auth = "s3cret";
  std::string line;
  std::thread peer([&] {
    line = fake.first_line();
    fake.hang_up();
  });
  CHECK_THROWS_AS(keylock::Client(options), keylock::ConnectionError);
  peer.join();
  INFO(line);
  CHECK(line.rfind(R"({"op":"hello")", 0) == 0);
  CHECK(contains(line, R"("auth":"s3cret")"));
  CHECK(contains(line, R"(,"user":"bill\"ing"})"));
}

TEST_CASE("a user locks what its rules allow; Denied elsewhere, on a connection that stays",
          "[client][users]") {
  SKIP_WITHOUT_USERS();
  temp_dir dir;
  keylock_daemon d({"--users-file", users_file(dir)});
  keylock::Client billing(as_user(options_for(d.port()), "billing", "billing-secret"));

  keylock::Lease held = billing.acquire("billing:1", bounded());
  CHECK(held.valid());
  CHECK(billing.inspect("billing:1").held);
  CHECK_THROWS_AS(billing.acquire("other:1", bounded()), keylock::Denied);
  CHECK_THROWS_AS(billing.inspect("other:1"), keylock::Denied);
  CHECK_THROWS_AS(billing.stats(), keylock::Denied);
  CHECK_THROWS_AS(billing.top(), keylock::Denied);
  std::error_code ec;
  CHECK_FALSE(billing.acquire("other:2", bounded(), ec));
  CHECK(ec == keylock::client_errc::denied);
  // Still the same connection: a drop would have lost the lease.
  CHECK(held.valid());
  CHECK(held.owned());
  held.release();

  keylock::Client ops(as_user(options_for(d.port()), "ops", "ops-secret"));
  CHECK(ops.acquire("other:1", bounded()).valid());
  CHECK(ops.stats().connections >= 2);
}

TEST_CASE("a wrong secret or an unknown user is an AuthError", "[client][users]") {
  SKIP_WITHOUT_USERS();
  temp_dir dir;
  keylock_daemon d({"--users-file", users_file(dir)});
  CHECK_THROWS_AS(keylock::Client(as_user(options_for(d.port()), "billing", "ops-secret")),
                  keylock::AuthError);
  CHECK_THROWS_AS(keylock::Client(as_user(options_for(d.port()), "nobody", "billing-secret")),
                  keylock::AuthError);
}

TEST_CASE("TLS and users together", "[client][users][tls]") {
  SKIP_WITHOUT_USERS();
  temp_dir dir;
  std::vector<std::string> args = tls_args(client_certs::required);
  args.insert(args.end(), {"--users-file", users_file(dir)});
  keylock_daemon d(args);
  keylock::client_options options = as_user(tls_options(tls_port(d)), "billing", "billing-secret");
  options.tls.cert_file = certs().pem("client");
  options.tls.key_file = certs().key("client");
  keylock::Client client(options);
  keylock::Lease lease = client.acquire("billing:tls", bounded());
  CHECK_THROWS_AS(client.acquire("other:tls", bounded()), keylock::Denied);
  CHECK(lease.owned());
  lease.release();
}

TEST_CASE("a client certificate that a user claims logs in as that user, with no secret",
          "[client][users][tls]") {
  SKIP_WITHOUT_USERS();
  temp_dir dir;
  std::vector<std::string> args = tls_args(client_certs::required);
  args.insert(args.end(), {"--users-file", users_file(dir, "CN=client")});
  keylock_daemon d(args);
  keylock::client_options options = tls_options(tls_port(d));
  options.tls.cert_file = certs().pem("client");
  options.tls.key_file = certs().key("client");
  keylock::Client client(options);
  keylock::Lease lease = client.acquire("billing:cert", bounded());
  CHECK_THROWS_AS(client.acquire("other:cert", bounded()), keylock::Denied);
  lease.release();
}

TEST_CASE("keylock with users: allowed runs, Denied exits 78, a wrong secret 77",
          "[client][users][cli]") {
  SKIP_WITHOUT_USERS();
  temp_dir dir;
  keylock_daemon d({"--users-file", users_file(dir)});
  const std::string server = "KEYLOCK_SERVER=127.0.0.1:" + std::to_string(d.port());

  SECTION("allowed, with the user from $KEYLOCK_USER") {
    child_process run(dir, cli({"run", "billing:cli", "--", "true"}),
                      {server, "KEYLOCK_USER=billing", "KEYLOCK_AUTH=billing-secret"});
    INFO(run.err());
    CHECK(run.wait() == 0);
  }
  SECTION("denied") {
    child_process run(
        dir,
        cli({"--user", "billing", "--auth", "billing-secret", "run", "other:cli", "--", "true"}),
        {server});
    CHECK(run.wait() == 78);
    CHECK(contains(run.err(), "denied"));
  }
  SECTION("a wrong secret") {
    child_process run(dir, cli({"--user", "billing", "--auth", "guess", "ping"}), {server});
    CHECK(run.wait() == 77);
  }
}
