# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch on this machine; any other pin would download a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]' --group dev
	# TF Serving's official protos, for the gRPC compatibility tests; its full-tensorflow pin would replace tensorflow-cpu.
	$(BIN)/python -m pip install -q --no-deps tensorflow-serving-api==2.21.0
	touch $@

# KServe's own v2 server, kept in a venv of its own because it pins protobuf; tests talk to it over HTTP.
KSERVE := .venv-kserve
$(KSERVE)/.installed: Makefile
	test -x $(KSERVE)/bin/python || $(PYTHON) -m venv $(KSERVE)
	$(KSERVE)/bin/python -m pip install -q --upgrade pip
	$(KSERVE)/bin/python -m pip install -q kserve
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/python examples/demo.py

test: install $(KSERVE)/.installed
	TILECAST_KSERVE_PYTHON=$(CURDIR)/$(KSERVE)/bin/python $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

bench: install
	$(BIN)/python bench/bench_predict.py

clean:
	rm -rf $(VENV) $(KSERVE) build out .pytest_cache .hypothesis
