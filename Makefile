# podsnap: build, demo, test, lint, bench.
CARGO ?= cargo
# Privileged tests (runsc, containerd, moto) must run, not skip, when we are root (CI is).
PODSNAP_REQUIRE_PRIVILEGED ?= $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)
export PODSNAP_REQUIRE_PRIVILEGED
# bookworm's runsc 20221219, kept beside the system runsc for the tests of that release
# (scripts/install-deps.sh puts it there).
RUNSC_20221219 := /opt/podsnap/runsc-20221219/runsc
ifneq ($(wildcard $(RUNSC_20221219)),)
PODSNAP_RUNSC_20221219 ?= $(RUNSC_20221219)
export PODSNAP_RUNSC_20221219
endif
# runsc built from 2026's gVisor (scripts/gvisor/build.sh; install-deps puts it there), for the
# tests that differ by release.
GVISOR_DIR := /opt/podsnap/gvisor
ifneq ($(wildcard $(GVISOR_DIR)/runsc),)
PODSNAP_RUNSC_2026 ?= $(GVISOR_DIR)/runsc
export PODSNAP_RUNSC_2026
endif

# The workspace version (Cargo.toml's [workspace.package]); the image is podsnap:$(VERSION).
VERSION := $(shell awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version/ { print $$2; exit }' Cargo.toml)
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: build image man deps deps-demo demo test test-rust test-runsc-2026 test-python lint fmt bench bench-e2e bench-incremental bench-coldstart bench-downtime soak clean
.PHONY: cluster-up cluster-down test-cluster

build:
	$(CARGO) build --workspace --bins

# The DaemonSet's image as an OCI archive, from the release binaries (no registry, no engine).
image:
	$(CARGO) build --release --bins -p podsnapd -p podsnapctl -p podsnap-runsc -p podsnap-controller
	python3 scripts/build-image.py --bin-dir $(TARGET_DIR)/release --version $(VERSION) --out target/oci/podsnap.tar

# podsnapctl's man pages from its clap definitions, into target/man (man -l target/man/podsnapctl.1).
man:
	$(CARGO) run -q -p podsnapctl -- man target/man

# Check (and as root install) the prerequisites before compiling anything.
deps:
	bash scripts/install-deps.sh test

deps-demo:
	bash scripts/install-deps.sh demo

# A new make after the install step, so that what it installed is seen (PODSNAP_RUNSC_20221219).
demo: deps-demo
	@$(MAKE) --no-print-directory build
	bash scripts/demo.sh

test: deps
	@$(MAKE) --no-print-directory image test-rust test-runsc-2026 test-python

# Bins first: the CLI and containerd tests run podsnapd and podsnap-runsc from the target dir.
test-rust:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

# The process-level suites whose behaviour differs by runsc release, again with the 2026 build
# as the `runsc` on PATH (podsnap-runtime's real-runsc tests run every release themselves).
RUNSC_2026_SUITES := -p podsnapd --test node --test crash --test containerd \
	-p podsnapctl --test cli -p podsnap-runsc --test containerd
test-runsc-2026:
	@if [ ! -x $(GVISOR_DIR)/runsc ]; then \
	  if [ "$(PODSNAP_REQUIRE_PRIVILEGED)" = 1 ]; then echo "$(GVISOR_DIR)/runsc missing (scripts/install-deps.sh test builds it)" >&2; exit 1; fi; \
	  echo "runsc 2026 not installed: skipping the second pass"; exit 0; fi; \
	PATH=$(GVISOR_DIR):$$PATH $(CARGO) test $(RUNSC_2026_SUITES) --no-fail-fast

test-python:
	python3 -m pytest -q tests/k8s tests/grpc

lint:
	$(CARGO) fmt --all -- --check
	python3 scripts/fn-length.py --max 100 crates
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	bash benches/run.sh

bench-e2e:
	bash benches/e2e.sh

bench-incremental:
	bash benches/incremental.sh

bench-coldstart:
	bash benches/coldstart.sh

bench-downtime:
	bash benches/downtime.sh

soak: build
	bash scripts/soak.sh

clean:
	$(CARGO) clean

# A one-node Kubernetes cluster of real parts built from Go modules (docs/cluster.md).
# podsnap is installed from `make image` as users install it (the DaemonSet and the
# controller's Deployment, scripts/cluster/install); PODSNAP_CLUSTER_HOST_PROCESSES=1 runs
# podsnapd and podsnap-controller as host processes from this clone's build instead.
cluster-up: image
	bash scripts/cluster/up.sh

cluster-down:
	bash scripts/cluster/down.sh

# The cluster tests (tests/cluster: the tutorial's SDK flow, the API, failure reasons,
# filesystem state, the resume on the other node) on a fresh local cluster of two nodes (one
# already up is taken down first), taken down afterwards whatever the outcome; then
# tests/cluster/sdk1 with the SDK 1.0.x (its own directory, SDK1_PATH) on agent-sandbox 1.x.
# That is gVisor's shim with runsc 2026, podsnap installed from `make image`. Then a second
# pass of tests/cluster on one node with PODSNAP_CLUSTER_SHIM=runc (containerd's runc shim +
# podsnap-runsc + Debian's runsc 20240729), the path existing nodes run. Needs root and Go.
# One at a time: a second test-cluster, cluster-up or cluster-down is refused while it runs.
SDK1_PATH ?= /opt/podsnap/sdk1
test-cluster: deps
	SDK1_PATH=$(SDK1_PATH) bash scripts/cluster/test.sh
