# syntax=docker/dockerfile:1.7
#
# One image, both binaries: `eventstream-operator` (the chart's Deployment runs it) and
# `eventstream-dataplane` (bridge and sink pods run `command: [eventstream-dataplane]`,
# `args: [bridge|sink, --config, /etc/eventstream/config.yaml]`).
#
#   docker build -t ghcr.io/eventstream-dev/eventstream:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Needs BuildKit (the default builder of Docker ≥ 23) for the cache mounts.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build

# rdkafka-sys builds librdkafka from source (features ssl, zstd): a C toolchain, make, perl,
# and the OpenSSL and zlib headers; no cmake. protox compiles the .proto files in Rust, so no
# protoc either.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc g++ make perl pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The registry and the target dir live in BuildKit caches (fast rebuilds); the binaries are
# copied out of the cache mount because its content is not part of the layer. Two cargo runs:
# built together, Cargo would unify features and compile the dataplane against the operator's
# eventstream-crds (feature `kube`), carrying kube and k8s-openapi it does not use.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p eventstream-dataplane --bin eventstream-dataplane \
 && cargo build --release --locked -p eventstream-operator --bin eventstream-operator \
 && mkdir -p /out \
 && cp target/release/eventstream-operator target/release/eventstream-dataplane /out/ \
 && /out/eventstream-operator --help >/dev/null \
 && /out/eventstream-dataplane --help >/dev/null

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="eventstream" \
      org.opencontainers.image.description="EventStream: Kubernetes operator (eventstream-operator) and data plane (eventstream-dataplane: bridge, sink)" \
      org.opencontainers.image.source="https://github.com/eventstream-dev/eventstream" \
      org.opencontainers.image.url="https://github.com/eventstream-dev/eventstream" \
      org.opencontainers.image.documentation="https://github.com/eventstream-dev/eventstream/tree/main/docs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="EventStream maintainers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# Runtime libraries of the two binaries: OpenSSL 3 and zlib (librdkafka links them
# dynamically), CA certificates (Kafka over TLS with a public CA).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/eventstream-operator /out/eventstream-dataplane /usr/local/bin/

# The uid/gid the operator's pod templates set (runAsUser/runAsGroup 65532, runAsNonRoot);
# numeric so `runAsNonRoot` can verify it without a passwd entry. Nothing is written to the root
# file system (pods mount it read-only, with an emptyDir at /tmp).
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080

# Pods name their command; the default is the operator.
CMD ["eventstream-operator", "run"]
