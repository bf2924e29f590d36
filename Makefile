# CLIP Attention Lab. A newcomer needs two targets: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test lint bench demo dashboard clean

install: $(STAMP)

# Idempotent: the venv is made once; requirements are reinstalled only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m compute.bench

demo: install
	$(BIN)/python -m compute demo

# The dashboard alone, on the demo store (or DB=path/to/store.duckdb).
DB ?= data/demo.duckdb
dashboard: install
	$(BIN)/python -m streamlit run dashboard/app.py --server.headless true -- --db $(DB)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
