# edgefleet — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
NODES ?= 50
# The demo as CI runs it: a small fleet, so it adds about two minutes.
CI_DEMO_NODES ?= 20
# The test bed's binaries (kubectl, helm) and kubeconfig, once `hack/cluster up` has run.
CLUSTER_ENV = eval "$$(hack/cluster env)"

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## The main job: local cluster with $(NODES) edge nodes, the whole suite via Helm, a live rollout, Prometheus.
	hack/demo --nodes $(NODES)

.PHONY: test
test: lint unit release-check demo-check ## Everything CI runs: lint, unit tests, the release build, the demo, then e2e against a fresh local cluster.
	hack/cluster up --nodes 60
	@if $(MAKE) --no-print-directory e2e; then \
		hack/cluster down; \
	else \
		echo "e2e failed: the cluster is left up for a look (eval \"\$$(hack/cluster env)\"; kubectl get all -A); 'hack/cluster down' removes it"; \
		exit 1; \
	fi

.PHONY: demo-check
demo-check: ## The demo on a fresh test bed (a running one is stopped) with $(CI_DEMO_NODES) nodes; fails unless the rollout completes and the edge got its objects.
	hack/cluster down
	@if hack/demo --nodes $(CI_DEMO_NODES); then \
		hack/cluster down; \
	else \
		echo "demo failed: the cluster is left up for a look (eval \"\$$(hack/cluster env)\"; logs in hack/.cluster/logs); 'hack/cluster down' removes it"; \
		exit 1; \
	fi

.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: unit
unit: ## Unit tests (no cluster), including the check that crds/ matches the code.
	$(CARGO) test --workspace --locked --exclude edgefleet-e2e

.PHONY: e2e
e2e: ## e2e tests against the running local cluster (hack/cluster up --nodes 60 first).
	$(CARGO) build --locked -p edgefleet-rollout -p edgefleet-objectsync -p edgefleet-device -p edgefleet-balancer -p edgefleet-hub -p edgefleet-edge-agent -p kubectl-edgefleet
	hack/prometheus install
	hack/haproxy install
	$(CLUSTER_ENV); $(CARGO) test -p edgefleet-e2e --locked -- --test-threads=4 --skip balancer::
	@# The balancer e2e alone: its 3,000 hollow agents and 3 hubs beside three other tests slowed
	@# Lease reads past the 4 s test leases, and the other operators lost their lead.
	$(CLUSTER_ENV); $(CARGO) test -p edgefleet-e2e --locked --test e2e -- --test-threads=1 balancer::

.PHONY: release-check
release-check: ## Release build of exactly the binaries the Dockerfile ships; its list checked.
	hack/release-check

.PHONY: crds
crds: ## Regenerate crds/ and the CRD chart's copy from the Rust types.
	$(CARGO) run -q -p edgefleet-api --bin crdgen

.PHONY: cluster-up cluster-down
cluster-up: ## Start the local control plane with $(NODES) simulated edge nodes.
	hack/cluster up --nodes $(NODES)
cluster-down: ## Stop it and remove its state.
	hack/cluster down
