# provisioner container image: multi-stage with cargo-chef (dependency layer cached separately),
# rustls everywhere (no OpenSSL at runtime), slim runtime, non-root user.
FROM rust:1-slim-bookworm AS chef
RUN cargo install --locked cargo-chef
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin provisioner

FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="provisioner" \
      org.opencontainers.image.description="Turns Salesforce Order approvals into provisioned WHMCS orders, exactly once" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin provisioner \
 && mkdir -p /data && chown 10001 /data
COPY --from=build --chmod=755 /app/target/release/provisioner /usr/local/bin/provisioner
USER 10001
WORKDIR /data
ENV HTTP_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/provisioner.db \
    LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["provisioner", "healthcheck"]
ENTRYPOINT ["provisioner"]
CMD ["serve"]
