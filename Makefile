# The two commands of the README. Both are idempotent: they install what is
# missing (Debian packages, the venv, the pinned Python deps) and nothing else.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# Build deps of libvirt-python, qemu-img for image jobs; libguestfs, its binding for the
# system Python and a kernel for its appliance (/boot may be empty) for guestkit jobs;
# noVNC for the browser UI's console (/ui/novnc/, from /usr/share/novnc).
RUN_PACKAGES := libvirt-dev pkg-config gcc qemu-utils \
	libguestfs-tools python3-guestfs linux-image-amd64 bubblewrap novnc
# Tests also start a real libvirtd with QEMU, and real Kafka brokers (scripts/kafka-broker:
# Maven fetches the pinned jars once, Java 17 runs them); they boot systemd in a
# container (systemd-container: systemd-nspawn) on the .deb, and render /docs in
# headless Chromium (the UI's tests drive it through chromedriver).
TEST_PACKAGES := $(RUN_PACKAGES) libvirt-daemon-system qemu-system-x86 systemd \
	openjdk-17-jre-headless maven \
	systemd-container chromium chromium-driver python3-venv python3-dev lintian acl
# make bench-http drives the load with wrk (a C load generator: the Python one took a
# share of the 2 cores the figures are about).
BENCH_PACKAGES := $(RUN_PACKAGES) wrk
# make deb: Debian's python3 and headers for the venv under /opt/hostagent, lintian.
DEB_PACKAGES := $(RUN_PACKAGES) python3-venv python3-dev lintian

RUN_ARGS ?=

.PHONY: run test test-fast lint bench bench-http bench-inspect bench-kafka deb system-deps-run \
	system-deps-bench system-deps-test system-deps-deb clean

# `make run` runs the agent of ./hostagent.toml: state and spool under ./var, the local
# API on var/state/api.sock (the CLI finds it from the checkout), HTTP on 127.0.0.1:8080
# without tokens (development only; refused on any non-loopback address).
run: system-deps-run $(STAMP)
	$(BIN)/hostagent run --config hostagent.toml $(RUN_ARGS)

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

bench-http: system-deps-bench $(STAMP)
	$(BIN)/python bench/http.py

bench-inspect: system-deps-run $(STAMP)
	$(BIN)/python bench/inspect.py

bench-kafka: system-deps-test $(STAMP)
	$(BIN)/python bench/kafka.py

# build/hostagent_<version>_amd64.deb (dpkg-deb; see packaging/build-deb), then lintian.
deb: system-deps-deb $(STAMP)
	$(SUDO) packaging/build-deb build
	lintian --suppress-tags-from-file packaging/lintian-suppressed build/hostagent_*.deb

system-deps-deb:
	@scripts/apt-ensure $(DEB_PACKAGES)

system-deps-run:
	@scripts/apt-ensure $(RUN_PACKAGES)

system-deps-bench:
	@scripts/apt-ensure $(BENCH_PACKAGES)

system-deps-test:
	@scripts/apt-ensure $(TEST_PACKAGES)

# The agent's byte-code is compiled here, not by its first start (exec -> READY=1 took
# 0.59 s uncompiled, 0.49 s compiled; issue 25).
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || scripts/apt-ensure python3-venv
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 agent
	@touch $@

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .coverage
