# Multi-stage build on Debian 12. The build stage runs CI's install script and CI's packaging
# steps (`make packages`: the package preset, then cpack); the image installs the keylockd
# Debian package from it, so it gets the same files, the keylock user and its state directory
# from the package's postinst, and the runtime libraries from the package's Depends.
FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN ./scripts/install-deps.sh \
 && make packages

FROM debian:bookworm-slim
COPY --from=build /src/build/package/keylockd_*.deb /tmp/
RUN apt-get update \
 && apt-get install -y --no-install-recommends /tmp/keylockd_*.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/keylockd_*.deb
USER keylock
EXPOSE 7400 7401
# Inside a container the ports must be reachable from outside it. The lock port allows that
# only with auth: pass the secret as a file (docker secret) or with --auth. The metrics port
# (/metrics, /healthz, /readyz) listens on all addresses too, for scrapers and probes.
ENTRYPOINT ["/usr/bin/keylockd", "--config", "/etc/keylock/keylockd.json", "--state-dir", "/var/lib/keylock"]
CMD ["--listen", "0.0.0.0:7400", "--metrics-listen", "0.0.0.0:7401", "--auth-file", "/run/secrets/keylock_auth"]
