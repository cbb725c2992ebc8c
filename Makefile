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

.PHONY: install sam-tools model serve test lint load bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned in requirements.txt; on a machine without a local CPU wheel, add the CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install
$(VENV)/.installed: requirements.txt requirements-prepare.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-prepare.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# SAM CLI and cfn-lint get a virtualenv of their own: with the app's pins, pip backtracks for ages.
$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==1.170.0 cfn-lint==1.58.0
	touch $@

sam-tools: $(SAM_VENV)/.installed

model: install
	$(BIN)/python -m distilgpt2_api prepare-model --source $(MODEL_SOURCE) --output $(MODEL_DIR) --if-missing

serve: model
	$(BIN)/python -m distilgpt2_api serve --host $(HOST) --port $(PORT)

test: install sam-tools
	$(BIN)/python -m pytest

# A bounded load test on loopback (8 clients x 60 s by default); not part of `make test`.
LOAD_CLIENTS ?= 8
LOAD_SECONDS ?= 60
load: model
	$(BIN)/python bench/load.py --model-dir $(MODEL_DIR) --clients $(LOAD_CLIENTS) --duration $(LOAD_SECONDS) --json load-report.json

# Benchmarks (not part of `make test`): writes bench/RESULTS.md and bench/results.json. About 25 min.
bench: install
	$(BIN)/python -m distilgpt2_api prepare-model --source smollm2 --output models/smollm2 --if-missing
	$(BIN)/python bench/bench.py --smollm2-dir models/smollm2 --out bench

lint: install
	$(BIN)/ruff check src tests handler.py
	$(BIN)/ruff format --check src tests handler.py

clean:
	rm -rf $(VENV) $(SAM_VENV) .pytest_cache
