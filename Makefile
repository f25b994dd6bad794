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
SCENARIOS := gpu_scan gpu_sharing node_lifecycle containerd_existing unreachable

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
# What `make test` installs from Debian (root, apt-get), checked once.  The venv alone needs only
# Python's venv and ensurepip (python3-venv): every locked package installs from a wheel.
DEBIAN_PACKAGES := python3-venv systemd systemd-container gnupg dpkg-dev openssh-server debootstrap gcc libyaml-dev iproute2 util-linux rsync shellcheck postgresql wrk

.PHONY: run help deps venv lock collection fleet-base fleet-image fleet-up fleet-down test test-checks test-unit test-api \
        test-contract test-sanity test-lint test-architecture test-build test-deploy test-standins test-fleet bench \
        bench-node-init bench-agent bench-agent-tenants clean agent-stubs

# The service on its embedded defaults: SQLite in ./var, 127.0.0.1:8080.
run: venv deps ## the REST service on its defaults (http://127.0.0.1:8080, SQLite in ./var); prints the first admin's login
	$(BIN)/gpuaas-api serve

# Every target says what it does with a `## ` comment on its own line, which is all `make help`
# prints (tests/unit/test_make_help.py fails on a target without one).
help: ## this list
	@awk 'BEGIN { FS = ":[^#]*## " } /^[a-zA-Z0-9_-]+:[^=]*## / { printf "make %-18s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# --------------------------------------------------------------------------- setup
# $(call apt-install,PACKAGES): apt-get installs those of PACKAGES that are missing (as root).
apt-install = missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

$(BUILD)/debian-packages.stamp:
	@mkdir -p $(BUILD)
	@$(call apt-install,$(DEBIAN_PACKAGES))
	@touch $@
deps: $(BUILD)/debian-packages.stamp ## the Debian packages the whole suite needs (apt-get, as root; once)

# The venv needs no apt and no root where $(PYTHON) can already make one (Debian: python3-venv),
# whatever else is missing.  Every package comes from requirements/dev.txt, its lock: exact
# versions and hashes.  The project itself is installed without build isolation, from the
# setuptools the lock holds, so nothing unlocked is downloaded.
$(VENV)/.installed: requirements/dev.txt pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(call apt-install,python3-venv); }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $@
venv: $(VENV)/.installed ## the development venv (.venv) from requirements/dev.txt; apt only when Python can't make a venv

# The locks: requirements/{runtime,dev,tools}.txt compiled from the .in files beside them, with
# every file's hash, for CPython 3.11 and later on any platform (uv's universal resolution).  A
# pin already in a lock stays unless its .in changed it; LOCK_FLAGS=--upgrade takes the newest
# of everything the .in files allow.  uv runs from its own venv, locked too (tools.txt).
LOCK_VENV := $(BUILD)/lock-venv
LOCK_FLAGS ?=
LOCK := UV_CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_VENV)/bin/uv pip compile --quiet --universal \
	--python-version 3.11 --generate-hashes $(LOCK_FLAGS)
$(LOCK_VENV)/.installed: requirements/tools.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(call apt-install,python3-venv); }
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --require-hashes -r requirements/tools.txt
	@touch $@
lock: $(LOCK_VENV)/.installed ## compile requirements/*.in into the hash-locked requirements/*.txt (LOCK_FLAGS=--upgrade)
	$(LOCK) -o requirements/runtime.txt requirements/runtime.in
	$(LOCK) -o requirements/dev.txt requirements/dev.in
	$(LOCK) -o requirements/tools.txt requirements/tools.in

$(COLLECTION_LINK):
	@mkdir -p $(dir $@)
	ln -sfn $(CURDIR) $@
collection: $(COLLECTION_LINK) ## this checkout as the collection hostedai.gpuaas under .build/collections

# The gpuaas agent's device plugin API stubs (api_pb2.py, api_pb2_grpc.py, committed beside the
# .proto), made again with the pinned grpcio-tools; tests/unit/test_agent_stubs.py fails when
# the committed ones differ from what this makes.
AGENT_PROTO := gpuaas_agent/deviceplugin/v1beta1/api.proto gpuaas_agent/podresources/v1/api.proto
agent-stubs: venv ## regenerate the agent's gRPC stubs (device plugin, PodResources) with the pinned grpcio-tools
	cd agent/src && $(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. $(AGENT_PROTO)

# --------------------------------------------------------------------------- fleet
# The image's base system needs only Debian's Python, so `make test` debootstraps it while pip
# fills the venv: both mostly wait on downloads.
fleet-base: deps ## debootstrap the fleet image's base system (.build/fleet)
	$(PYTHON) tests/fleet/fleet.py base

fleet-image: venv deps fleet-base ## the fleet's node image and signed package repository
	$(FLEET) image

fleet-up: fleet-image collection ## start N test-fleet nodes (N=5; make fleet-up N=3); refuses over a running fleet
	$(FLEET) up $(N)

fleet-down: venv ## stop every fleet node
	$(FLEET) down

# --------------------------------------------------------------------------- tests
# The checks that need no fleet share nothing but the read-only checkout (and the node image,
# built once, under a lock), so two run at a time (the API tests mostly wait on servers and
# jobs), and they run beside the fleet's tests, which spend most of their time waiting too
# (SSH, apt, reboots: under half a core of this machine's two, measured).  Each one's output
# is printed whole when it ends.  The venv and the image's base system are made side by side
# first: the checks start when the venv is ready, the fleet's tests when the image is.
test: deps collection ## install everything (as root) and run the whole suite: every check and the fleet's tests
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-checks test-fleet
	@echo "all checks passed"

test-checks: venv deps collection ## every check that needs no fleet, two at a time
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-api test-contract test-sanity test-lint test-architecture \
	  test-unit test-build test-deploy test-standins

test-unit: venv collection ## pytest tests/unit: the modules, roles' helpers, agent, inventory plugin, Makefile
	$(BIN)/pytest -q tests/unit

# The fuzzed contract: schemathesis (every check; examples, coverage, fuzzing and stateful phases,
# seeded and deterministic, about 2,900 requests) against a real `gpuaas-api serve` on a fresh SQLite database
# with no job workers.  Its data, reports and Hypothesis's storage stay in .build/pytest-contract;
# tests/contract/schemathesis.toml holds the settings that have no option.
test-contract: venv ## the fuzzed OpenAPI contract: schemathesis against a real gpuaas-api serve
	rm -rf $(BUILD)/pytest-contract
	$(BIN)/pytest -q -s -p no:cacheprovider --basetemp=$(BUILD)/pytest-contract tests/contract

# The API tests run twice, at the same time: on SQLite, and on a throw-away PostgreSQL server
# (most of their time is spent waiting on servers and jobs, so two runs take little longer
# than one).  The SQLite run has its own pytest directory and its output is printed after.
# PostgreSQL's data lives in a fresh directory under /tmp, removed after: the server runs as
# the postgres user, who may not be able to enter the checkout (a clone under /root).
test-api: venv deps collection ## pytest tests/api on SQLite and, at the same time, on a throw-away PostgreSQL
	@pgdir=$$(mktemp -d /tmp/gpuaas-test-postgres.XXXXXX) && url=$$(tests/api/postgres.sh start $$pgdir) && \
	  rm -rf $(BUILD)/pytest-api-sqlite && mkdir -p $(BUILD) && \
	  { $(BIN)/pytest -q -p no:cacheprovider --basetemp=$(BUILD)/pytest-api-sqlite tests/api \
	      > $(BUILD)/test-api-sqlite.log 2>&1 & sqlite=$$!; } && \
	  GPUAAS_TEST_DATABASE_URL="$$url" $(BIN)/pytest -q -p no:cacheprovider tests/api; postgres=$$?; \
	  wait $$sqlite; sqlite=$$?; echo "--- tests/api on SQLite:"; cat $(BUILD)/test-api-sqlite.log; \
	  tests/api/postgres.sh stop $$pgdir; rm -rf $$pgdir; [ $$postgres = 0 ] && [ $$sqlite = 0 ]

# The shipped systemd unit: systemd-analyze verify, and the service started as the unit starts it
# (its user, its absolute path, systemd's PATH).  Needs root.
test-deploy: venv deps ## the shipped systemd unit: verified, and the service started as it says (root)
	$(BIN)/pytest -q tests/deploy

# ansible-test wants to run from inside ansible_collections/<ns>/<name>: copy
# the tracked files there.  Its caches and virtual environments go under ~/.ansible/test
# (a fixed path in ansible-test), so HOME is the checkout's for it.  Every sanity test runs; tests/sanity/ignore-2.19.txt
# lists the few ignores, and docs/development.md says why.
test-sanity: export HOME := $(BUILD)/home
test-sanity: venv ## ansible-test sanity, every test
	$(BIN)/python tests/sanity/seed_pip_bootstrap.py
	rm -rf $(BUILD)/sanity && mkdir -p $(BUILD)/sanity/ansible_collections/hostedai/gpuaas
	git ls-files -co --exclude-standard | rsync -a --files-from=- ./ $(BUILD)/sanity/ansible_collections/hostedai/gpuaas/
	cd $(BUILD)/sanity/ansible_collections/hostedai/gpuaas && git init -q && git add -A && \
	  $(BIN)/ansible-test sanity --python 3.11 --color no

test-lint: venv collection ## ansible-lint --offline, production profile
	ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1 $(BIN)/ansible-lint --offline --profile production

# The import contracts between the packages (.importlinter); its cache stays under .build/.
test-architecture: venv ## lint-imports: the import contracts of .importlinter
	$(BIN)/lint-imports --cache-dir $(BUILD)/cache/import-linter

test-build: venv ## build and install the collection tarball; ansible-doc for every module and role
	rm -rf $(BUILD)/dist $(BUILD)/installed && mkdir -p $(BUILD)/dist
	$(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/dist .
	ANSIBLE_COLLECTIONS_PATH=$(BUILD)/installed $(BIN)/ansible-galaxy collection install --offline --force -p $(BUILD)/installed $(BUILD)/dist/hostedai-gpuaas-*.tar.gz
	$(BIN)/pytest -q tests/build --installed $(BUILD)/installed --tarball $$(ls $(BUILD)/dist/hostedai-gpuaas-*.tar.gz)

# The stand-in packages and the fake API server in chroots of the node image: no fleet runs.
# (`fleet.py image` waits while the fleet's own target builds the image.)
test-standins: fleet-image ## the stand-in packages and the fake kube-apiserver, in chroots of the node image (root)
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 tests/standins

# The fleet is machine-wide: make sure none is left over, and always stop ours.
test-fleet: fleet-image collection ## the fleet harness, molecule scenarios and end-to-end tests on a fleet (root)
	@$(FLEET) down >/dev/null 2>&1 || true
	@status=0; \
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 tests/fleet_harness || status=1; \
	if [ $$status = 0 ]; then \
	  $(FLEET) hub && \
	  for s in $(SCENARIOS); do \
	    echo "=== molecule test -s $$s"; started=$$(date +%s); \
	    $(FLEET) exec -- env PATH="$$PATH" $(BIN)/molecule test -s $$s || { status=1; break; }; \
	    echo "=== molecule test -s $$s took $$(( $$(date +%s) - started )) s"; \
	  done; \
	fi; \
	if [ $$status = 0 ]; then \
	  echo "=== end-to-end: gpuaas-api serve against the fleet"; \
	  $(FLEET) exec -- env PATH="$$PATH" $(BIN)/pytest -q -p no:cacheprovider --durations=15 tests/e2e || status=1; \
	fi; \
	$(FLEET) down || status=1; \
	exit $$status

bench: fleet-image collection ## fleet scan benchmark: scan_gpus against ansible -m ping, 1, 5 and 10 nodes
	$(BIN)/python bench/fleet_scan.py

bench-node-init: fleet-image collection ## node_init with packages on, on 1 and 10 fresh nodes
	$(BIN)/python bench/node_init.py

# The agent's device plugin: Allocate latency and config-change-to-new-list, 8 GPUs x ratio 10.
bench-agent: venv ## the agent's device plugin: Allocate latency, config change to new list
	$(BIN)/python bench/agent_plugin.py

# The agent's tenant look: CPU per poll and Pod start to tenant, 8 GPUs x 10 slots all held.
bench-agent-tenants: venv ## the agent's tenants: CPU per poll, Pod start to tenant in the report (80 slots held)
	$(BIN)/python bench/agent_tenants.py

clean: fleet-down ## stop the fleet and remove .build/ (the venv stays)
	rm -rf $(BUILD)
