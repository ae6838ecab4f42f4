# syntax=docker/dockerfile:1.7
# One small non-root image with every edgefleet binary; each chart Deployment runs its own
# command from it (/usr/local/bin/edgefleet-<component>).
#
#   docker build -t ghcr.io/edgefleet/edgefleet:0.1.0 .
#
# `make release-check` builds exactly BINARIES with the same cargo command and checks that
# every binary of the workspace is either shipped here or listed in NOT_SHIPPED, and that
# every command the chart runs is shipped.

# Binaries shipped in the image (cargo --bin names).
# edge-agent and kubectl-edgefleet join this list when they land.
ARG BINARIES="edgefleet-rollout edgefleet-objectsync edgefleet-device edgefleet-balancer edgefleet-hub edge-agent kubectl-edgefleet"
# Workspace binaries deliberately left out: build-time and test tools.
ARG NOT_SHIPPED="crdgen sim-image-cache sim-hub-kubelet sim-lease-load sim-device-load"

FROM docker.io/library/rust:1.95-slim-bookworm AS build
ARG BINARIES
WORKDIR /src
COPY . .
# Registry and target caches survive between builds (BuildKit); the binaries are copied out
# of the cache mount into /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    cargo build --release --locked $(for b in ${BINARIES}; do printf -- '--bin %s ' "$b"; done); \
    mkdir -p /out; \
    for b in ${BINARIES}; do cp "target/release/$b" /out/; done

# glibc + libgcc, no shell, no package manager; uid/gid 65532 as the chart's podSecurityContext.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# The chart sets the command per operator; this default only documents the image.
ENTRYPOINT ["/usr/local/bin/edgefleet-rollout"]
