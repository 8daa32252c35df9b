# The two commands of the README. Both are idempotent: they install what is
# missing (Debian packages, the venv, the pinned Python deps) and nothing else.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# Build deps of libvirt-python, qemu-img for image jobs; libguestfs, its binding for the
# system Python and a kernel for its appliance (/boot may be empty) for guestkit jobs.
RUN_PACKAGES := libvirt-dev pkg-config gcc qemu-utils \
	libguestfs-tools python3-guestfs linux-image-amd64
# Tests also start a real libvirtd with QEMU, and real Kafka brokers (scripts/kafka-broker:
# Maven fetches the pinned jars once, Java 17 runs them).
TEST_PACKAGES := $(RUN_PACKAGES) libvirt-daemon-system qemu-system-x86 systemd \
	openjdk-17-jre-headless maven

RUN_ARGS ?=

.PHONY: run test test-fast lint bench bench-http bench-inspect bench-kafka system-deps-run \
	system-deps-test clean

# `make run` serves the HTTP API on 127.0.0.1:8080 without tokens, for local development;
# the agent refuses --insecure-no-auth on any non-loopback address.
run: system-deps-run $(STAMP)
	$(BIN)/hostagent run --state-dir var/state --spool-dir var/spool --log-format console \
		--libvirt-uri test:///default --insecure-no-auth $(RUN_ARGS)

test: system-deps-test $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest --cov --cov-report=term-missing:skip-covered

# The inner loop: everything but the real-process soak tests (marked slow); no mypy.
test-fast: system-deps-test $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: system-deps-run $(STAMP)
	$(BIN)/python bench/spool.py

bench-http: system-deps-run $(STAMP)
	$(BIN)/python bench/http.py

bench-inspect: system-deps-run $(STAMP)
	$(BIN)/python bench/inspect.py

bench-kafka: system-deps-test $(STAMP)
	$(BIN)/python bench/kafka.py

system-deps-run:
	@scripts/apt-ensure $(RUN_PACKAGES)

system-deps-test:
	@scripts/apt-ensure $(TEST_PACKAGES)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || scripts/apt-ensure python3-venv
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .coverage
