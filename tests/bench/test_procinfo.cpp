#include "procinfo.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace keylock::bench;

TEST_CASE("the listening socket's inode is found in /proc/net/tcp text", "[bench][proc]") {
  const char* text =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
      "timeout inode\n"
      "   0: 0100007F:1CE8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        "
      "0 12345 1 0000000000000000 100 0 0 10 0\n"
      "   1: 0100007F:1CE9 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        "
      "0 777 1 0000000000000000 20 4 30 10 -1\n";
  CHECK(parse_listening_inode(text, 7400) == 12345u);
  CHECK_FALSE(parse_listening_inode(text, 7401));  // established, not listening
  CHECK_FALSE(parse_listening_inode(text, 80));
  CHECK_FALSE(parse_listening_inode("", 80));
}

TEST_CASE("status and stat fields are parsed", "[bench][proc]") {
  const char* status = "Name:\tkeylockd\nVmRSS:\t   10240 kB\nCpus_allowed_list:\t1\n";
  CHECK(parse_vmrss_bytes(status) == 10240u * 1024);
  CHECK(parse_cpus_allowed(status) == "1");
  CHECK_FALSE(parse_vmrss_bytes("Name:\tx\n"));
  CHECK(parse_cpus_allowed("Name:\tx\n").empty());
  const char* stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 1 0";
  CHECK(parse_stat_cpu_ticks(stat) == 325u);
  CHECK_FALSE(parse_stat_cpu_ticks("4242 (x) S 1"));
}

TEST_CASE("machine CPU time is read from the first line of /proc/stat", "[bench][proc]") {
  const char* stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
  auto m = parse_machine_cpu(stat);
  REQUIRE(m);
  CHECK(m->busy == 100 + 5 + 50 + 3 + 2 + 1);
  CHECK(m->total == m->busy + 1000 + 20);
  CHECK_FALSE(parse_machine_cpu("cpu0 1 2 3\n"));
  CHECK_FALSE(parse_machine_cpu("cpu  1 2 3\n"));
  CHECK(read_machine_cpu().has_value());
  CHECK(seconds_per_tick() > 0);
}

TEST_CASE("this process is found listening on its own port", "[bench][proc]") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  CHECK(find_listening_pid(ntohs(addr.sin_port)) == ::getpid());
  ::close(fd);
  CHECK(read_rss_bytes(::getpid()).value_or(0) > 0);
  CHECK(read_cpu_seconds(::getpid()).has_value());
  CHECK_FALSE(read_process_name(::getpid()).empty());
  CHECK_FALSE(self_cpus_allowed().empty());
  CHECK_FALSE(read_rss_bytes(0));
}
