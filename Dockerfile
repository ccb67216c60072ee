# The image deploy/daemonset.yaml runs: flowgate-agent (with its eBPF object embedded) and the flowgate CLI
# (readiness probe, `kubectl exec ... flowgate monitor`).
#
#   docker build -t flowgate/flowgate-agent:0.1.0 .
#   make image        # the same with buildah, base images built locally (no daemon, no registry needed)
#
# Build stage: stable Rust for the workspace, the pinned nightly with rust-src for the eBPF crate, and
# bpf-linker built against Debian's LLVM 22 (the nightly's LLVM major), as scripts/setup.sh sets up a machine.
# The base images, overridable: `make image` (scripts/build-image.sh) builds both locally where no registry
# is reachable, and passes them here.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUST_IMAGE} AS build
ARG EBPF_TOOLCHAIN=nightly-2026-05-20
ARG BPF_LINKER_VERSION=0.13.0
RUN apt-get update \
    && apt-get install -y --no-install-recommends llvm-22-dev libzstd-dev protobuf-compiler pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN rustup toolchain install "${EBPF_TOOLCHAIN}" --profile minimal --component rust-src \
    && LLVM_PREFIX=/usr/lib/llvm-22 cargo install "bpf-linker@${BPF_LINKER_VERSION}" --locked \
        --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p flowgate-agent --bin flowgate-agent -p flowgate-cli --bin flowgate \
    && mkdir -p /out && cp target/release/flowgate-agent target/release/flowgate /out/

# Runtime stage: the two binaries on Debian slim; iproute2 for looking at the node from inside the pod.
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/flowgate-agent /out/flowgate /usr/local/bin/
ENTRYPOINT ["flowgate-agent"]
CMD ["--kubernetes"]
