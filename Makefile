# sparkvisor: `make demo` runs a real streaming job under sparkvisor (probes on
# :8080); `make test` runs the whole suite. Both install what they need:
# a Java 17 JDK (apt-get, when `java` or `javac` is missing) and pyspark from
# PyPI: the default Spark (the newest supported, 4.3) into ./.venv, and for
# `make test` each other supported line into its own ./.venv-spark-<line>.

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# SPARK_HOME of the pyspark wheel, computed when a recipe runs (after install).
SPARK_HOME_CMD := $(PYTHON) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'
# The other supported Spark lines, one virtualenv each (requirements-spark-<line>.txt).
SPARK_LINES := 3.5 4.0
LINE_STAMPS := $(foreach l,$(SPARK_LINES),$(CURDIR)/.venv-spark-$(l)/.installed)
# No .pyc compilation at install (Python compiles what it imports).
PIP_INSTALL = -m pip install -q --no-compile --disable-pip-version-check

.PHONY: test test-all demo lint java venv venvs build help s3s-fs agent faketime promtool fixtures

help:
	@echo "make demo      run the example streaming job under sparkvisor (probes on :8080)"
	@echo "make test      install what is missing, then fmt, clippy and the whole test suite"
	@echo "make fixtures  regenerate the checkpoint fixtures of every supported Spark (runs Spark)"

# The tests compile the CDS link agent's source (javac) to check its jar.
java:
	@command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 || { \
	  echo "java or javac not found: installing openjdk-17-jdk-headless"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openjdk-17-jdk-headless; }
	@java -version 2>&1 | head -1

# The agent sparkvisor loads into a Java 17/18 driver before asking it for
# its CDS archive (src/jvm/agent); the jar is committed and embedded in the
# binary. Run after changing the agent's source.
AGENT := src/jvm/agent
agent: java
	rm -rf target/agent && mkdir -p target/agent
	javac --release 11 -d target/agent $(AGENT)/sparkvisor/agent/LinkLoadedClasses.java
	jar --create --file $(AGENT)/link-loaded-classes.jar --manifest $(AGENT)/MANIFEST.MF \
	  --date 2026-01-01T00:00:00Z -C target/agent sparkvisor

$(STAMP): requirements-test.txt
	python3 -m venv $(VENV)
	$(PYTHON) $(PIP_INSTALL) -r requirements-test.txt
	touch $@

# .venv-spark-<line>: pyspark of that line (and what its tests need), pinned.
$(CURDIR)/.venv-spark-%/.installed: requirements-spark-%.txt
	python3 -m venv $(CURDIR)/.venv-spark-$*
	$(CURDIR)/.venv-spark-$*/bin/python $(PIP_INSTALL) -r requirements-spark-$*.txt
	touch $@

venv: $(STAMP)

venvs: $(STAMP) $(LINE_STAMPS)

# The S3-compatible server the replication tests start (checks signatures,
# path-style addressing and multipart part sizes).
s3s-fs:
	@command -v s3s-fs >/dev/null 2>&1 || test -x "$$HOME/.cargo/bin/s3s-fs" || { \
	  echo "s3s-fs not found: installing it (S3-compatible test server)"; \
	  cargo install s3s-fs --version 0.14.1 --features binary --locked; }

# tests/clock_step.rs steps sparkvisor's own wall clock with libfaketime
# (LD_PRELOAD into sparkvisor only; the machine's clock is never touched).
FAKETIME_LIB := /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
faketime:
	@test -f $(FAKETIME_LIB) || { \
	  echo "libfaketime not found: installing it (clock-step test)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libfaketime; }

# promtool checks the chart's alerting rules and dashboard queries
# (tests/chart.rs). Unpacked from Debian's prometheus package into
# target/tools/bin: installing the package would also start a Prometheus
# server on this machine.
PROMTOOL := target/tools/bin/promtool
promtool:
	@command -v promtool >/dev/null 2>&1 || test -x $(PROMTOOL) || { \
	  echo "promtool not found: unpacking it from Debian's prometheus package"; \
	  rm -rf target/tools/deb && mkdir -p target/tools/deb target/tools/bin && \
	  (cd target/tools/deb && { apt-get download -qq prometheus 2>/dev/null || \
	    { $(SUDO) apt-get update -qq && apt-get download -qq prometheus; }; }) && \
	  dpkg-deb -x target/tools/deb/prometheus_*.deb target/tools/deb/root && \
	  cp target/tools/deb/root/usr/bin/promtool $(PROMTOOL) && rm -rf target/tools/deb; }
	@{ command -v promtool || echo $(PROMTOOL); } | head -1

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features fault-injection -- -D warnings

build:
	cargo build --release

demo: java venv build
	@echo "sparkvisor demo: examples/rate_stream.py under sparkvisor (config/demo.toml)"
	@echo "  probes: curl localhost:8080/ready /health /status /metrics   stop: Ctrl-C"
	export SPARK_HOME="$$($(SPARK_HOME_CMD))" PYSPARK_PYTHON="$(PYTHON)"; \
	  exec ./target/release/sparkvisor run --config config/demo.toml

# Everything `make test` does, timed as a whole (installs, build, tests).
# The virtualenvs install side by side (mostly downloads and unpacking).
test:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j3 venvs && $(MAKE) --no-print-directory test-all; status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s in total (installs, build, every test)"; \
	exit $$status

# The tests run the example binaries (checkpoint_sync), so build them
# first. Benchmarks (benches/, harness = false) are not tests: `cargo test
# --all-targets` would run them, so the targets are named.
# The whole suite runs even after a failing test binary (--no-fail-fast), so
# one run shows every failure.
# The test build has the test-only fault injection (tests/faults.rs;
# src/fault.rs), which release builds never have. The default Spark is
# SPARK_HOME; the tests find the other lines' venvs.
test-all: java venvs s3s-fs faketime promtool lint
	cargo build --examples --features fault-injection
	export SPARK_HOME="$$($(SPARK_HOME_CMD))" PYSPARK_PYTHON="$(PYTHON)"; \
	  cargo test --lib --bins --tests --features fault-injection --no-fail-fast -- --test-threads=2

# The checkpoint fixtures (tests/fixtures/checkpoints/spark-<line>), made by
# real Spark of each supported line; holds the machine-wide Spark lock.
fixtures: venvs
	for v in $(CURDIR)/.venv $(foreach l,$(SPARK_LINES),$(CURDIR)/.venv-spark-$(l)); do \
	  home=$$($$v/bin/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'); \
	  $$v/bin/python tests/fixtures/checkpoints/generate.py --spark-home "$$home" --python $$v/bin/python || exit 1; \
	done
