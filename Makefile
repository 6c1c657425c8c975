# The two commands of the README: `make demo` (RUNTIME=kubernetes for its Kubernetes variant) and `make test`;
# the benchmarks: `make bench-rollout` and `make bench-reconnect`, AGENTS=N for another fleet size (bench/README.md).
# Each installs what it needs: Debian packages when missing, a virtualenv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint deps venv control-plane clean bench-rollout bench-reconnect

AGENTS ?= 100

deps:
	@bash scripts/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: deps $(STAMP)

# make demo ARGS=--keep-running: leave the fleet and its web dashboard up until Ctrl-C.
# make demo RUNTIME=kubernetes: the same path on a Kubernetes control plane started on this machine (its
# binaries built first when this machine has not built them: see control-plane).
RUNTIME ?= podman
demo: venv
	$(PY) examples/demo/run_demo.py --runtime $(RUNTIME) $(ARGS)

# Kubernetes' own binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok), built from
# their Go modules once per machine into ~/.cache/edgecollab; later runs find them and build nothing.
control-plane: venv
	$(PY) -m edgesim.k8s_build

# The linter and the type checker, at the versions pyproject.toml pins and with its settings. Fast enough to
# run first in make test: ruff well under a second, mypy about 20 s on a fresh clone (CI) and about 1 s after.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Two workers, each taking whole test files (module fixtures stay with their tests): most tests wait on
# brokers, hubs, pods and API servers rather than on the CPU. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: venv lint control-plane
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Printed figures, never a timed test; BENCH_ARGS passes more flags (--timeout, --full-agents, --window).
bench-rollout: venv
	$(PY) bench/rollout.py --agents $(AGENTS) $(BENCH_ARGS)

bench-reconnect: venv
	$(PY) bench/reconnect.py --agents $(AGENTS) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache
