# podsnap: build, demo, test, lint, bench.
CARGO ?= cargo
# Privileged tests (runsc, containerd, moto) must run, not skip, when we are root (CI is).
PODSNAP_REQUIRE_PRIVILEGED ?= $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)
export PODSNAP_REQUIRE_PRIVILEGED

.PHONY: build demo test test-rust test-python lint fmt bench bench-e2e soak clean
.PHONY: cluster-up cluster-down

build:
	$(CARGO) build --workspace --bins

demo: build
	bash scripts/demo.sh

test: test-rust test-python

# Bins first: the CLI and containerd tests run podsnapd and podsnap-runsc from the target dir.
test-rust:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

test-python:
	python3 -m pytest -q tests/k8s

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	bash benches/run.sh

bench-e2e:
	bash benches/e2e.sh

soak: build
	bash scripts/soak.sh

clean:
	$(CARGO) clean

# A one-node Kubernetes cluster of real parts built from Go modules (docs/cluster.md).
cluster-up:
	bash scripts/cluster/up.sh

cluster-down:
	bash scripts/cluster/down.sh
