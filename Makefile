# CLIP Attention Lab. A newcomer needs two targets: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast lint bench demo dashboard clean

install: $(STAMP)

# Idempotent: the venv is made once; requirements are reinstalled only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

# Every tier: unit, integration, regression, browser (the README's command, and CI's). Two workers (the
# machine's cores), each taking the next test as it finishes one; the modules whose module fixtures are dear
# (a local Ray, a browser and its server, a reference run) stay on one worker each (conftest.ONE_WORKER).
# TESTS=tests/browser (any pytest arguments) for a part.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup $(TESTS)

# The unit tier alone: seconds, for the edit-run loop.
test-fast: install
	$(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m tools.bench

# The dashboard listens on this machine only: ADDRESS=0.0.0.0 exposes it (and the store) to the network.
ADDRESS ?= 127.0.0.1

# PORT=8600 for another port (default 8501, or the next free one).
demo: install
	$(BIN)/python -m compute demo --address $(ADDRESS) $(if $(PORT),--port $(PORT))

# The dashboard alone, on the default store ($CLIP_LAB_DB, else data/results.duckdb), or DB=path/to/store.duckdb.
dashboard: install
	$(BIN)/python -m streamlit run dashboard/app.py --server.headless true --server.address $(ADDRESS) \
		--server.port $(or $(PORT),8501) --browser.gatherUsageStats false --client.toolbarMode minimal \
		-- $(if $(DB),--db $(DB))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
