# hostedai.gpuaas: developer and CI entry points.  `make test` is the one command
# that installs what it needs and runs every check; `.ci/run` calls it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian's own Python, as on a production host: the venv (and the service run from it) must
# work for a non-root service user, and an interpreter under /root (pyenv) is not theirs to run.
PYTHON ?= /usr/bin/python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
N ?= 5
SCENARIOS := gpu_scan gpu_sharing node_lifecycle unreachable

# Keep every Ansible run out of the home directory, and find this checkout as
# the hostedai.gpuaas collection.
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections
export ANSIBLE_HOME := $(BUILD)/ansible-home
export ANSIBLE_LOCAL_TEMP := $(BUILD)/ansible-home/tmp
export ANSIBLE_ASYNC_DIR := $(BUILD)/ansible-home/async
export MOLECULE_GLOB := molecule/*/molecule.yml
# Every cache a run makes (pip, ansible-lint's, molecule's) stays in the checkout: CI's clean
# clone then starts from nothing, as a new user does, and no cache hides a missing step.
export XDG_CACHE_HOME := $(BUILD)/cache
export PIP_CACHE_DIR := $(BUILD)/cache/pip
export PATH := $(BIN):$(PATH)

FLEET := $(BIN)/python tests/fleet/fleet.py
COLLECTION_LINK := $(BUILD)/collections/ansible_collections/hostedai/gpuaas
DEBIAN_PACKAGES := python3-venv systemd systemd-container gnupg dpkg-dev openssh-server debootstrap gcc libyaml-dev iproute2 util-linux rsync shellcheck postgresql wrk

.PHONY: run help deps venv collection fleet-base fleet-image fleet-up fleet-down test test-checks test-unit test-api test-contract test-sanity \
        test-lint test-build test-deploy test-standins test-fleet test-molecule bench bench-node-init bench-agent clean agent-stubs

# The service on its embedded defaults: SQLite in ./var, 127.0.0.1:8080.
run: venv deps
	$(BIN)/gpuaas-api serve

help:
	@echo "make test                 install everything and run the whole suite (as root)"
	@echo "make fleet-up N=3         start N test-fleet nodes;  make fleet-down  stops them"
	@echo "make bench                fleet scan benchmark (1, 5, 10 nodes)"
	@echo "make bench-node-init      node_init with packages on, fresh nodes (1, 10 nodes)"
	@echo "make bench-agent          the agent's device plugin: Allocate latency, config change to new list"

# --------------------------------------------------------------------------- setup
$(BUILD)/debian-packages.stamp:
	@mkdir -p $(BUILD)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	@touch $@
deps: $(BUILD)/debian-packages.stamp

$(VENV)/.installed: requirements.txt pyproject.toml | $(BUILD)/debian-packages.stamp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@
venv: $(VENV)/.installed

$(COLLECTION_LINK):
	@mkdir -p $(dir $@)
	ln -sfn $(CURDIR) $@
collection: $(COLLECTION_LINK)

# The gpuaas agent's device plugin API stubs (api_pb2.py, api_pb2_grpc.py, committed beside the
# .proto), made again with the pinned grpcio-tools; tests/unit/test_agent_stubs.py fails when
# the committed ones differ from what this makes.
AGENT_PROTO := gpuaas_agent/deviceplugin/v1beta1/api.proto
agent-stubs: venv
	cd agent/src && $(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. $(AGENT_PROTO)

# --------------------------------------------------------------------------- fleet
# The image's base system needs only Debian's Python, so `make test` debootstraps it while pip
# fills the venv: both mostly wait on downloads.
fleet-base: deps
	$(PYTHON) tests/fleet/fleet.py base

fleet-image: venv deps fleet-base
	$(FLEET) image

fleet-up: fleet-image collection
	$(FLEET) up $(N)

fleet-down: venv
	$(FLEET) down

# --------------------------------------------------------------------------- tests
# The checks that need no fleet share nothing but the read-only checkout (and the node image,
# built once, under a lock), so two run at a time (the API tests mostly wait on servers and
# jobs), and they run beside the fleet's tests, which spend most of their time waiting too
# (SSH, apt, reboots: under half a core of this machine's two, measured).  Each one's output
# is printed whole when it ends.  The venv and the image's base system are made side by side
# first: the checks start when the venv is ready, the fleet's tests when the image is.
test: deps collection
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-checks test-fleet
	@echo "all checks passed"

test-checks: venv deps collection
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-api test-contract test-sanity test-lint test-unit test-build \
	  test-deploy test-standins

test-unit: venv collection
	$(BIN)/pytest -q tests/unit

# The fuzzed contract: schemathesis (every check; examples, coverage, fuzzing and stateful phases,
# seeded and deterministic, about 2,900 requests) against a real `gpuaas-api serve` on a fresh SQLite database
# with no job workers.  Its data, reports and Hypothesis's storage stay in .build/pytest-contract;
# tests/contract/schemathesis.toml holds the settings that have no option.
test-contract: venv
	rm -rf $(BUILD)/pytest-contract
	$(BIN)/pytest -q -s -p no:cacheprovider --basetemp=$(BUILD)/pytest-contract tests/contract

# The API tests run twice, at the same time: on SQLite, and on a throw-away PostgreSQL server
# (most of their time is spent waiting on servers and jobs, so two runs take little longer
# than one).  The SQLite run has its own pytest directory and its output is printed after.
# PostgreSQL's data lives in a fresh directory under /tmp, removed after: the server runs as
# the postgres user, who may not be able to enter the checkout (a clone under /root).
test-api: venv deps collection
	@pgdir=$$(mktemp -d /tmp/gpuaas-test-postgres.XXXXXX) && url=$$(tests/api/postgres.sh start $$pgdir) && \
	  rm -rf $(BUILD)/pytest-api-sqlite && mkdir -p $(BUILD) && \
	  { $(BIN)/pytest -q -p no:cacheprovider --basetemp=$(BUILD)/pytest-api-sqlite tests/api \
	      > $(BUILD)/test-api-sqlite.log 2>&1 & sqlite=$$!; } && \
	  GPUAAS_TEST_DATABASE_URL="$$url" $(BIN)/pytest -q -p no:cacheprovider tests/api; postgres=$$?; \
	  wait $$sqlite; sqlite=$$?; echo "--- tests/api on SQLite:"; cat $(BUILD)/test-api-sqlite.log; \
	  tests/api/postgres.sh stop $$pgdir; rm -rf $$pgdir; [ $$postgres = 0 ] && [ $$sqlite = 0 ]

# The shipped systemd unit: systemd-analyze verify, and the service started as the unit starts it
# (its user, its absolute path, systemd's PATH).  Needs root.
test-deploy: venv deps
	$(BIN)/pytest -q tests/deploy

# ansible-test wants to run from inside ansible_collections/<ns>/<name>: copy
# the tracked files there.  Its caches and virtual environments go under ~/.ansible/test
# (a fixed path in ansible-test), so HOME is the checkout's for it.  Every sanity test runs; tests/sanity/ignore-2.19.txt
# lists the few ignores, and docs/development.md says why.
test-sanity: export HOME := $(BUILD)/home
test-sanity: venv
	$(BIN)/python tests/sanity/seed_pip_bootstrap.py
	rm -rf $(BUILD)/sanity && mkdir -p $(BUILD)/sanity/ansible_collections/hostedai/gpuaas
	git ls-files -co --exclude-standard | rsync -a --files-from=- ./ $(BUILD)/sanity/ansible_collections/hostedai/gpuaas/
	cd $(BUILD)/sanity/ansible_collections/hostedai/gpuaas && git init -q && git add -A && \
	  $(BIN)/ansible-test sanity --python 3.11 --color no

test-lint: venv collection
	ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1 $(BIN)/ansible-lint --offline --profile production

test-build: venv
	rm -rf $(BUILD)/dist $(BUILD)/installed && mkdir -p $(BUILD)/dist
	$(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/dist .
	ANSIBLE_COLLECTIONS_PATH=$(BUILD)/installed $(BIN)/ansible-galaxy collection install --offline --force -p $(BUILD)/installed $(BUILD)/dist/hostedai-gpuaas-*.tar.gz
	$(BIN)/pytest -q tests/build --installed $(BUILD)/installed --tarball $$(ls $(BUILD)/dist/hostedai-gpuaas-*.tar.gz)

# The stand-in packages and the fake API server in chroots of the node image: no fleet runs.
# (`fleet.py image` waits while the fleet's own target builds the image.)
test-standins: fleet-image
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 tests/standins

# The fleet is machine-wide: make sure none is left over, and always stop ours.
test-fleet: fleet-image collection
	@$(FLEET) down >/dev/null 2>&1 || true
	@status=0; \
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 tests/fleet_harness || status=1; \
	if [ $$status = 0 ]; then \
	  $(FLEET) hub && \
	  for s in $(SCENARIOS); do \
	    echo "=== molecule test -s $$s"; \
	    $(FLEET) exec -- env PATH="$$PATH" $(BIN)/molecule test -s $$s || { status=1; break; }; \
	  done; \
	fi; \
	if [ $$status = 0 ]; then \
	  echo "=== end-to-end: gpuaas-api serve against the fleet"; \
	  $(FLEET) exec -- env PATH="$$PATH" $(BIN)/pytest -q -p no:cacheprovider --durations=15 tests/e2e || status=1; \
	fi; \
	$(FLEET) down || status=1; \
	exit $$status

bench: fleet-image collection
	$(BIN)/python bench/fleet_scan.py

bench-node-init: fleet-image collection
	$(BIN)/python bench/node_init.py

# The agent's device plugin: Allocate latency and config-change-to-new-list, 8 GPUs x ratio 10.
bench-agent: venv
	$(BIN)/python bench/agent_plugin.py

clean: fleet-down
	rm -rf $(BUILD)
