#!/usr/bin/env bash
# Pinned versions of everything the local test bed (hack/cluster) runs.
# Single source of truth: hack/tools/*/go.mod must require the same versions.
# Sourced by hack/cluster; safe to source from other scripts too.
# shellcheck disable=SC2034 # the variables are for the sourcing script

KUBERNETES_VERSION=v1.34.4 # hack/tools/kubernetes/go.mod (k8s.io/kubernetes, staging v0.34.4)
ETCD_VERSION=v3.6.16       # hack/tools/etcd/go.mod (go.etcd.io/etcd/server/v3)
KWOK_VERSION=v0.8.0        # go install sigs.k8s.io/kwok/cmd/kwok (needs Go >= 1.26)
HELM_VERSION=v3.22.0       # go install helm.sh/helm/v3/cmd/helm (latest v3.x, builds with Go 1.26)

# Binaries are cached per version set, outside the repo, so worktrees and
# `git clean` do not force a rebuild. A version bump yields a new directory.
EDGEFLEET_CACHE_KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
EDGEFLEET_BIN_DIR="${EDGEFLEET_CACHE:-${HOME}/.cache/edgefleet}/${EDGEFLEET_CACHE_KEY}/bin"
