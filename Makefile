# sparkvisor: `make demo` runs a real streaming job under sparkvisor (probes on
# :8080); `make test` runs the whole suite. Both install what they need:
# a Java 17 JDK (apt-get, when `java` or `javac` is missing) and pyspark into
# ./.venv.

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# SPARK_HOME of the pyspark wheel, computed when a recipe runs (after install).
SPARK_HOME_CMD := $(PYTHON) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'

.PHONY: test demo lint java venv build help s3s-fs agent promtool

help:
	@echo "make demo   run the example streaming job under sparkvisor (probes on :8080)"
	@echo "make test   install what is missing, then fmt, clippy and the whole test suite"

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
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(STAMP)

# The S3-compatible server the replication tests start (checks signatures,
# path-style addressing and multipart part sizes).
s3s-fs:
	@command -v s3s-fs >/dev/null 2>&1 || test -x "$$HOME/.cargo/bin/s3s-fs" || { \
	  echo "s3s-fs not found: installing it (S3-compatible test server)"; \
	  cargo install s3s-fs --version 0.14.1 --features binary --locked; }

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

build:
	cargo build --release

demo: java venv build
	@echo "sparkvisor demo: examples/rate_stream.py under sparkvisor (config/demo.toml)"
	@echo "  probes: curl localhost:8080/ready /health /status /metrics   stop: Ctrl-C"
	export SPARK_HOME="$$($(SPARK_HOME_CMD))" PYSPARK_PYTHON="$(PYTHON)"; \
	  exec ./target/release/sparkvisor run --config config/demo.toml

# `cargo test --all-targets` builds examples as test harnesses only; the
# tests run the example binaries (checkpoint_sync), so build them first.
test: java venv s3s-fs promtool lint
	cargo build --examples
	export SPARK_HOME="$$($(SPARK_HOME_CMD))" PYSPARK_PYTHON="$(PYTHON)"; \
	  cargo test --all-targets -- --test-threads=2
