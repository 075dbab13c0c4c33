# syntax=docker/dockerfile:1.7
# scan-service: multi-stage build. Build context is the repository root:
#   docker build -f docker/scan-service.Dockerfile -t voketag/scan-service .

# ---- build ---------------------------------------------------------------------------------
# `make pgo` must run with this exact release for its profile to be used (see below).
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
# With pgo/scan-service.profdata in the context (written by `make pgo`, to be run before this
# build), this is the profile-guided build that `make bench` measures; without it, a plain
# release build. A profile matches code by symbol names, which differ between compiler versions,
# so a profile made by another rustc than this image's (pgo/scan-service.rustc) fails the build
# rather than silently optimizing nothing. `--target` keeps the profile off build scripts and
# proc macros.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=voketag-target-scan-service \
    host=$(rustc -vV | sed -n 's/^host: //p') && [ -n "$host" ] \
 && if [ -f pgo/scan-service.profdata ]; then \
      if ! rustc -vV | cmp -s - pgo/scan-service.rustc; then \
        echo "pgo/scan-service.profdata was not made by $(rustc -V): run make pgo with it" >&2; exit 1; \
      fi; \
      echo "profile-guided build with pgo/scan-service.profdata"; \
      export RUSTFLAGS="-Cprofile-use=/src/pgo/scan-service.profdata"; \
    else \
      echo "no pgo/scan-service.profdata: plain release build (make pgo first for the profile-guided one)"; \
    fi \
 && cargo build --release -p scan-service --locked --target "$host" \
 && install -D -m 0755 "target/$host/release/scan-service" /out/scan-service

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 voketag \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin voketag
COPY --from=build /out/scan-service /usr/local/bin/scan-service
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:8080 LOG_FORMAT=json RUST_LOG=info
EXPOSE 8080
# No HEALTHCHECK here: docker-compose.yml and Cloud Run probe /healthz themselves.
ENTRYPOINT ["/usr/local/bin/scan-service"]
