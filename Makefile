# Quick start: `make run` (set up and open the app on the embedded default), `make test` (set up and run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OPENBLAS := /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# setuptools prints a box warning about editable installs on every one; it says nothing to act on here
PIP_QUIET := PYTHONWARNINGS="ignore::Warning"

.PHONY: run test test-llama install install-test system-deps default-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# On Linux, MLX's wheel ships a reference BLAS (~5 GFLOP/s); Debian's OpenBLAS (~200 GFLOP/s) is
# preloaded for the engine when installed. tmux drives the end-to-end test.
system-deps:
	@if [ "$$(uname -s)" = "Linux" ]; then \
	  need=""; \
	  [ -e $(OPENBLAS) ] || need="$$need libopenblas0-pthread"; \
	  [ "$(TMUX_NEEDED)" = "1" ] && ! command -v tmux >/dev/null 2>&1 && need="$$need tmux"; \
	  if [ -z "$$need" ]; then :; \
	  elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$need with apt-get"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else \
	    echo "note: could not install$$need (needs root and apt-get): run 'sudo apt-get install$$need'. Without OpenBLAS, MLX on this CPU is about 40x slower."; \
	  fi; \
	fi

# stamps: pip runs again only when pyproject.toml changes
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_QUIET) $(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP_QUIET) $(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: system-deps $(VENV)/.installed

install-test: TMUX_NEEDED = 1
install-test: system-deps $(VENV)/.installed-test

default-model: install
	@$(BIN)/farense-tui model default

run: install default-model
	$(BIN)/farense-tui --config configs/farense.yaml

# the tests train and generate in-process too: with the engine's BLAS (see DEVELOPERS.md), not the reference one
test: install-test
	@if [ -e $(OPENBLAS) ]; then export LD_PRELOAD=$(OPENBLAS); fi; $(BIN)/pytest -q

# a real llama.cpp (built from its source: minutes) loads an exported GGUF and answers like our chat
test-llama: install-test
	$(PIP_QUIET) $(BIN)/pip install -q -e '.[test,llama]'
	@if [ -e $(OPENBLAS) ]; then export LD_PRELOAD=$(OPENBLAS); fi; $(BIN)/pytest -q tests/test_export_formats.py -k llama_cpp

clean:
	rm -rf $(VENV) build *.egg-info
