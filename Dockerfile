# SignalR Relay in a container: a multi-stage build, then a small Debian runtime running the
# relay as a non-root user. No container engine runs on this project's CI machines, so this
# file is not built there (see the README); the binary is the release build of the README's
# Performance section (`cargo build --release`), for the relay alone.
#
#   docker build -t signalr-relay .
#   docker run -p 8080:8080 -e SIGNALR_RELAY_ACCESS_KEY=<key> signalr-relay

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin signalr-relay

FROM debian:bookworm-slim
# curl, for the health check only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /src/target/release/signalr-relay /usr/local/bin/signalr-relay
USER relay
# Listen on every interface inside the container; publish the port to choose who reaches it.
ENV SIGNALR_RELAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
# SIGTERM drains (clients are told to reconnect); give it --drain-timeout (30 s) to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/signalr-relay"]
