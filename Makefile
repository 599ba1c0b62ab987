# Set-up and entry points. Both `make demo` and `make test` install everything they need on a fresh
# Debian 12 machine: Debian packages with apt-get (once), Python packages in .venv.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := grub-common fdisk e2fsprogs nginx docker-registry skopeo umoci curl chromium kubectl

.PHONY: demo test quick reliability lint crd deps apt bench

demo: deps
	$(VENV)/bin/kubeos-rollout demo $(ARGS)

test: deps
	$(MAKE) lint
	$(VENV)/bin/pytest -q tests

# The quick loop: everything but the slow end-to-end tests.
quick: deps
	$(VENV)/bin/pytest -q -m "not slow" tests

# The benchmarks of docs/benchmarks.md, one after the other: a few minutes each on a 2-core machine. Run them on
# an otherwise idle machine; every script takes smaller sizes as flags (see --help).
bench: deps
	$(PY) -m bench.staging
	$(PY) -m bench.rollout
	$(PY) -m bench.makespan
	$(PY) -m bench.makespan --suggest-continue-as-new 300

# The fault and bad-input suite, counted (about 6 minutes): each scenario appends its result and the table in
# docs/reliability.md is rendered from them, also after a failure, which then shows in the table.
RELIABILITY_RESULTS ?= build/reliability
reliability: deps
	rm -rf $(RELIABILITY_RESULTS)
	KUBEOS_RELIABILITY_RESULTS=$(RELIABILITY_RESULTS) $(VENV)/bin/pytest -q -m reliability tests/reliability; \
	status=$$?; $(PY) -m tests.reliability.results $(RELIABILITY_RESULTS) --doc docs/reliability.md; exit $$status

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

crd: deps
	$(VENV)/bin/kubeos-rollout crd --output deploy/crd/upgrade.openeuler.org_os.yaml

deps: apt $(STAMP)

apt:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)
