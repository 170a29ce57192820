# syntax=docker/dockerfile:1
# provisioner container image.
#
#   docker build -t provisioner:latest .
#   docker run --env-file .env -p 8080:8080 provisioner:latest          # daemon (default)
#   docker run --env-file .env provisioner:latest migrate               # any other command
#
# Multi-stage: cargo-chef caches the dependency build in its own layer, so a source change only
# recompiles the workspace crates. The build context is what .dockerignore lets in (the inputs
# of the build, nothing else); the runtime image holds the `provisioner` binary only. TLS is rustls with built-in roots everywhere (reqwest, tonic): the
# runtime image needs no OpenSSL. The runtime is debian-slim with ca-certificates only, running
# as an unprivileged user. Deployment: deploy/docker-compose.yml and docs/operations.md.

ARG RUST_VERSION=1
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked "cargo-chef@${CARGO_CHEF_VERSION}"
WORKDIR /app

# The recipe needs every workspace member's manifest and targets (cargo loads them all).
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY src src
RUN cargo chef prepare --recipe-path recipe.json

# Only the dependencies of the `provisioner` binary are cooked and built; crates/lab (chaos and
# bench) is a workspace member but never compiled here.
FROM chef AS build
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --package provisioner --bin provisioner \
      --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY crates crates
COPY migrations migrations
COPY config/default.toml config/default.toml
COPY docs/openapi.json docs/openapi.json
COPY src src
RUN cargo build --release --locked --package provisioner --bin provisioner \
 && cp target/release/provisioner /usr/local/bin/provisioner \
 && /usr/local/bin/provisioner --version

FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="provisioner" \
      org.opencontainers.image.description="Turns Salesforce Order approvals into provisioned WHMCS orders, exactly once" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 provisioner \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin provisioner \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /usr/local/bin/provisioner /usr/local/bin/provisioner
USER 10001:10001
WORKDIR /data
# SQLite (the default ledger) lives in /data: mount a volume there, or use PostgreSQL
# (required for several replicas; see deploy/docker-compose.yml).
ENV HTTP_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/provisioner.db \
    LOG_FORMAT=json
EXPOSE 8080
# `provisioner healthcheck` asks the local daemon's /health/ready (database and Redis reachable)
# on the port of HTTP_ADDR and exits 0 or 1; no shell or curl needed in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["provisioner", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["provisioner"]
CMD ["serve"]
