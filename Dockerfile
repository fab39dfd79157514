# Multi-stage build on Debian 12. The build stage runs the same install script and the same
# CMake preset as CI (`make test` -> scripts/install-deps.sh, cmake --preset release).
FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN ./scripts/install-deps.sh \
 && cmake --preset release \
 && cmake --build --preset release -j "$(nproc)" \
 && ctest --preset release -L "unit|smoke" \
 && cmake --install build/release --prefix /opt/keylock

# Runtime libraries of keylockd: OpenSSL, spdlog and fmt, libsystemd (sd_notify), and gRPC +
# protobuf (cluster mode).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libspdlog1.10 libfmt9 libsystemd0 libgrpc++1.51 libprotobuf32 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/keylock --create-home keylock
COPY --from=build /opt/keylock/ /usr/local/
USER keylock
EXPOSE 7400 7401
# Inside a container the ports must be reachable from outside it. The lock port allows that
# only with auth: pass the secret as a file (docker secret) or with --auth. The metrics port
# (/metrics, /healthz, /readyz) listens on all addresses too, for scrapers and probes.
ENTRYPOINT ["/usr/local/bin/keylockd", "--config", "/usr/local/etc/keylock/keylockd.json", "--state-dir", "/var/lib/keylock"]
CMD ["--listen", "0.0.0.0:7400", "--metrics-listen", "0.0.0.0:7401", "--auth-file", "/run/secrets/keylock_auth"]
