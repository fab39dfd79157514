// Prometheus text exposition (format 0.0.4) of a metrics_snapshot. Runs only when scraped, so
// clarity beats speed here; it still formats numbers with std::to_chars (locale-independent)
// into one reserved string.
#include "metrics.hpp"

#include "keylock/protocol.hpp"

#include <charconv>
#include <cmath>
#include <string_view>

namespace keylock {

namespace {

constexpr std::string_view prefix = "keylock_";

// Every errc, in enum order, for the one errors_total sample per code.
constexpr std::array all_codes = {
    errc::bad_request, errc::unknown_op,     errc::frame_too_large, errc::unauthenticated,
    errc::timeout,     errc::not_held,       errc::cancelled,       errc::not_found,
    errc::conflict,    errc::limit_exceeded, errc::shutting_down,   errc::unavailable,
    errc::denied,
};
static_assert(all_codes.size() == std::tuple_size_v<decltype(metrics_snapshot::errors)>,
              "metrics_snapshot::errors has one slot per errc");

// The `le` label of each bucket bound: like printf("%g") of the bound in seconds ("1e-05",
// "2.5e-05", "0.0001", ..., "60"), which is also how the Go client spells them. Computed by
// to_chars' general format, which never depends on the locale. Stable: dashboards and
// recording rules match these strings.
std::string le_text(std::int64_t bound_ns) {
  std::array<char, 32> buf{};
  double seconds = static_cast<double>(bound_ns) / 1e9;
  auto res =
      std::to_chars(buf.data(), buf.data() + buf.size(), seconds, std::chars_format::general);
  return {buf.data(), res.ptr};
}

class writer {
 public:
  explicit writer(std::string& out) : out_(out) {}

  // "# HELP keylock_<name> <help>\n# TYPE keylock_<name> <type>\n". `help` is a constant
  // of this file: it holds no backslash or newline, so it needs no escaping.
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += prefix;
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += prefix;
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  // A sample without labels, or with the labels already rendered ("{code=\"timeout\"}").
  void sample(std::string_view name, std::string_view labels, std::uint64_t value) {
    out_ += prefix;
    out_ += name;
    out_ += labels;
    out_ += ' ';
    append_uint(value);
    out_ += '\n';
  }

  void counter(std::string_view name, std::string_view help, std::uint64_t value) {
    family(name, "counter", help);
    sample(name, {}, value);
  }

  void gauge(std::string_view name, std::string_view help, std::uint64_t value) {
    family(name, "gauge", help);
    sample(name, {}, value);
  }

  void histogram(std::string_view name, std::string_view help, const duration_histogram& h) {
    family(name, "histogram", help);
    std::string bucket_name(name);
    bucket_name += "_bucket";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < duration_histogram::bounds_ns.size(); ++i) {
      cumulative += h.buckets[i];
      std::string labels = "{le=\"" + le_text(duration_histogram::bounds_ns[i]) + "\"}";
      sample(bucket_name, labels, cumulative);
    }
    // +Inf is the sum of all buckets, which observe() keeps equal to `count`. Rendered as
    // summed (not copied from count) so that a snapshot that broke that invariant shows it.
    cumulative += h.buckets.back();
    sample(bucket_name, "{le=\"+Inf\"}", cumulative);
    out_ += prefix;
    out_ += name;
    out_ += "_sum ";
    append_seconds(h.sum_ns);
    out_ += '\n';
    sample(std::string(name) + "_count", {}, h.count);
  }

  void append_uint(std::uint64_t v) {
    std::array<char, 24> buf{};
    auto res = std::to_chars(buf.data(), buf.data() + buf.size(), v);
    out_.append(buf.data(), res.ptr);
  }

  // Exact decimal seconds from integer nanoseconds: "0", "1.5", "0.000010001". No rounding
  // through a double, so _sum is exact for any sum below 2^64 ns (584 years).
  void append_seconds(std::uint64_t ns) {
    append_uint(ns / 1'000'000'000u);
    std::uint64_t frac = ns % 1'000'000'000u;
    if (frac == 0) return;
    std::array<char, 9> digits{};
    for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
      *it = static_cast<char>('0' + frac % 10);
      frac /= 10;
    }
    std::size_t len = digits.size();
    while (digits[len - 1] == '0') --len;
    out_ += '.';
    out_.append(digits.data(), len);
  }

  // A double as Prometheus reads it: shortest round-trip fixed notation, or NaN/+Inf/-Inf.
  void append_double(double v) {
    if (std::isnan(v)) {
      out_ += "NaN";
    } else if (std::isinf(v)) {
      out_ += v > 0 ? "+Inf" : "-Inf";
    } else {
      std::array<char, 400> buf{};  // fixed notation of the largest double: 309 digits
      auto res = std::to_chars(buf.data(), buf.data() + buf.size(), v, std::chars_format::fixed);
      out_.append(buf.data(), res.ptr);
    }
  }

  // A label value escaped as the format requires: \\, \" and \n.
  void append_label_value(std::string_view v) {
    for (char c : v) {
      switch (c) {
        case '\\':
          out_ += "\\\\";
          break;
        case '"':
          out_ += "\\\"";
          break;
        case '\n':
          out_ += "\\n";
          break;
        default:
          out_ += c;
      }
    }
  }

 private:
  std::string& out_;
};

}  // namespace

std::string render_prometheus(const metrics_snapshot& m) {
  std::string out;
  out.reserve(8192);  // the whole exposition is about 6 KiB
  writer w(out);

  w.gauge("connections", "Open lock-protocol connections.", m.connections);
  w.gauge("keys", "Keys in the lock table (held or waited on).", m.keys);
  w.gauge("leases_held", "Leases currently held.", m.held);
  w.gauge("waiters", "Acquires currently waiting for a lease.", m.waiting);

  w.counter("acquires_total", "Acquire requests accepted by the dispatcher.", m.acquires);
  w.counter("grants_total", "Leases granted (immediately or after waiting).", m.grants);
  w.family("grants_by_mode_total", "counter",
           "Leases granted, by mode (a lease over several keys counts once).");
  w.sample("grants_by_mode_total", "{mode=\"exclusive\"}", m.grants - m.grants_shared);
  w.sample("grants_by_mode_total", "{mode=\"shared\"}", m.grants_shared);
  w.counter("releases_total", "Leases released by their holder.", m.releases);
  w.counter("extends_total", "Successful lease extensions.", m.extends);
  w.counter("timeouts_total", "Acquires that timed out before being granted.", m.timeouts);
  w.counter("cancels_total", "Waiting acquires cancelled by the cancel op.", m.cancels);
  w.counter("expirations_total", "Leases that expired at the end of their TTL.", m.expirations);
  w.counter("disconnect_releases_total", "Leases released because their connection closed.",
            m.disconnect_releases);
  w.counter("connections_accepted_total", "Lock-protocol connections accepted.",
            m.connections_accepted);
  w.counter("connections_refused_total", "Lock-protocol connections refused at max_connections.",
            m.connections_refused);

  w.family("errors_total", "counter", "Error replies sent, by error code.");
  for (errc code : all_codes) {
    std::string labels = "{code=\"";
    labels += to_string(code);  // wire spellings need no escaping
    labels += "\"}";
    w.sample("errors_total", labels, m.errors[static_cast<std::size_t>(code)]);
  }

  w.counter("bytes_received_total", "Bytes read from lock-protocol connections.", m.bytes_in);
  w.counter("bytes_sent_total", "Bytes written to lock-protocol connections.", m.bytes_out);

  w.histogram("wait_seconds", "Time from acquire to grant (immediate grants observe 0).", m.wait);
  w.histogram("hold_seconds",
              "Time from grant to the end of the lease (release, expiry or disconnect).", m.hold);

  if (m.cluster) {
    w.gauge("cluster_up", "1 while this daemon's etcd lease is proven alive (cluster mode).",
            m.cluster_up ? 1 : 0);
    w.gauge("cluster_rights_held", "Keys whose global right this daemon holds.", m.rights_held);
    w.counter("cluster_global_acquisitions_total", "Global rights won in etcd.",
              m.global_acquisitions);
    w.counter("cluster_local_handoffs_total",
              "Grants made under a right already held (no etcd round trip).", m.local_handoffs);
    w.counter("cluster_remote_handoffs_total", "Rights passed on to another waiting daemon.",
              m.remote_handoffs);
    w.counter("cluster_idle_releases_total", "Rights given up after idle_keep_ms unused.",
              m.idle_releases);
    w.counter("cluster_sessions_lost_total",
              "etcd leases this daemon could not prove alive (every lease ended).",
              m.sessions_lost);
    w.histogram("etcd_round_trip_seconds", "Round trip of one create or delete request to etcd.",
                m.etcd_round_trip);
  }

  w.family("process_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch, in seconds.");
  out += prefix;
  out += "process_start_time_seconds ";
  w.append_double(m.start_time_seconds);
  out += '\n';

  w.family("build_info", "gauge", "Build information; the value is always 1.");
  out += prefix;
  out += "build_info{version=\"";
  w.append_label_value(m.version);
  out += "\"} 1\n";
  return out;
}

}  // namespace keylock
