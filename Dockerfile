# syntax=docker/dockerfile:1
# The slicelb agent image: the eBPF programs (built with the pinned nightly and bpf-linker)
# embedded in the `slicelb` binary (built with the pinned stable), on a small Debian base.
#
#   docker build -t slicelb:0.1.0 .
#
# The pins match xtask's setup; change them there and here together.
ARG RUST_VERSION=1.99.1
ARG EBPF_TOOLCHAIN=nightly-2026-10-29
ARG BPF_LINKER_VERSION=0.13.0
# The nightly's own LLVM library; bpf-linker is built against exactly this file, so that it
# emits BPF objects the nightly's rustc agrees with.
ARG NIGHTLY_LIBLLVM=libLLVM.so.23.1-rust-1.101.0-nightly

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS toolchains
ARG EBPF_TOOLCHAIN
ARG BPF_LINKER_VERSION
ARG NIGHTLY_LIBLLVM
RUN rustup toolchain install "${EBPF_TOOLCHAIN}" --profile minimal --component rust-src
RUN set -eux; \
    llvm="$(rustc +"${EBPF_TOOLCHAIN}" --print sysroot)/lib/${NIGHTLY_LIBLLVM}"; \
    test -f "${llvm}"; \
    mkdir -p /opt/llvm/lib; \
    ln -s "${llvm}" /opt/llvm/lib/libLLVM.so; \
    ln -s "${llvm}" "/opt/llvm/lib/${NIGHTLY_LIBLLVM}"; \
    LLVM_PREFIX=/opt/llvm cargo install bpf-linker --version "${BPF_LINKER_VERSION}" \
        --root /opt/bpf-linker; \
    /opt/bpf-linker/bin/bpf-linker --version

FROM toolchains AS build
ENV PATH=/opt/bpf-linker/bin:${PATH}
# The commit `slicelb_build_info` reports (.git is not in the build context):
#   docker build --build-arg SLICELB_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
ARG SLICELB_GIT_COMMIT=unknown
WORKDIR /src
COPY . .
# lb-userspace's build script builds lb-ebpf with the nightly (through rustup) and embeds it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package lb-userspace --bin slicelb \
    && cp target/release/slicelb /usr/local/bin/slicelb

# Debian rather than distroless: the DaemonSet's init step needs sh, stat and mount to make
# sure the host has a BPF filesystem. Same Debian release as the build stage, so same glibc.
FROM docker.io/library/debian:bookworm-slim
COPY --from=build /usr/local/bin/slicelb /usr/local/bin/slicelb
ENTRYPOINT ["/usr/local/bin/slicelb"]
CMD ["--help"]
