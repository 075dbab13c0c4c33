# syntax=docker/dockerfile:1.7
# factory-service: multi-stage build. Build context is the repository root:
#   docker build -f docker/factory-service.Dockerfile -t voketag/factory-service .

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS build
# cmake and clang: aws-lc-sys (rustls' crypto provider) compiles C.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# No sqlx::query! macros (runtime queries only); SQLX_OFFLINE keeps one from ever reaching for a
# live database at build time.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
# The caches keep the registry and target dir between builds; the binary is copied out of the
# cache mount because mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=voketag-target-factory-service \
    cargo build --release -p factory-service --locked \
 && install -D -m 0755 target/release/factory-service /out/factory-service

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 voketag \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin voketag
COPY --from=build /out/factory-service /usr/local/bin/factory-service
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:8081 LOG_FORMAT=json RUST_LOG=info
EXPOSE 8081
# No HEALTHCHECK here: docker-compose.yml and Cloud Run probe /healthz themselves.
ENTRYPOINT ["/usr/local/bin/factory-service"]
