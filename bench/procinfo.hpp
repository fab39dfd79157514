// What keylock-bench reads about the server processes from /proc: which process listens on a
// port, its resident memory (VmRSS), its CPU time and the CPUs it may run on.
//
// Linux only. Every reader returns nullopt / empty when the file is missing or unreadable
// (the server is on another machine, or belongs to another user): the bench then reports the
// number as unknown rather than failing. The parse_* functions are pure, for tests.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keylock::bench {

// The socket inode of a listening socket on local `port` in the text of /proc/net/tcp or
// /proc/net/tcp6 (state 0A), or nullopt.
std::optional<std::uint64_t> parse_listening_inode(std::string_view proc_net_tcp,
                                                   std::uint16_t port);

// VmRSS of the text of /proc/PID/status, in bytes, or nullopt.
std::optional<std::uint64_t> parse_vmrss_bytes(std::string_view status);

// Cpus_allowed_list of the text of /proc/PID/status ("1", "0-1"), or empty.
std::string parse_cpus_allowed(std::string_view status);

// utime + stime, in clock ticks, of the text of /proc/PID/stat (whose comm field may hold
// spaces and parentheses), or nullopt.
std::optional<std::uint64_t> parse_stat_cpu_ticks(std::string_view stat);

// Busy and total CPU time of the whole machine, in clock ticks, from the first ("cpu ") line of
// /proc/stat: busy = user + nice + system + irq + softirq + steal, total = busy + idle + iowait.
struct machine_cpu {
  std::uint64_t busy = 0;
  std::uint64_t total = 0;
};
std::optional<machine_cpu> parse_machine_cpu(std::string_view proc_stat);
std::optional<machine_cpu> read_machine_cpu();
// Seconds per clock tick of /proc/stat and /proc/PID/stat.
double seconds_per_tick();

// The pid of the process that owns the socket listening on local TCP `port`, or 0 when none
// is found (not local, or its /proc/PID/fd is not readable by us).
int find_listening_pid(std::uint16_t port);

std::optional<std::uint64_t> read_rss_bytes(int pid);
std::string read_cpus_allowed(int pid);
std::optional<double> read_cpu_seconds(int pid);  // user + system time so far
std::string read_process_name(int pid);           // /proc/PID/comm, without the newline

// The CPUs this process may run on, as a list ("0", "0-1").
std::string self_cpus_allowed();

}  // namespace keylock::bench
