// The consumer of issue 16's package tests: one with_lock against the keylockd named by argv[1].
// Prints "consumer: held KEY with token N" and exits 0, or says what failed and exits 1.
#include <keylock/client.hpp>

#include <cstdint>
#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: consumer HOST:PORT\n";
    return 2;
  }
  try {
    keylock::client_options options;
    options.server = argv[1];
    keylock::Client client(options);
    const std::uint64_t token = client.with_lock(
        "consumer:key", [](const keylock::Lease& lease) { return lease.token(); });
    std::cout << "consumer: held consumer:key with token " << token << "\n";
    return token > 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "consumer: " << e.what() << "\n";
    return 1;
  }
}
