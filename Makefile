# `make run` and `make test` bootstrap everything from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench system-deps docs clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

system-deps:
	@scripts/system-deps.sh

## Run the node agent on its embedded defaults (Ctrl-C stops it). The default backup job
## backs up ~/swarm-data into a local repository: the directory is created for it.
run: $(STAMP)
	@mkdir -p "$(HOME)/swarm-data"
	$(BIN)/swarm-maint agent

## Lint, type-check and run the whole test suite.
test: system-deps $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

## Measure the agent against its real peers; writes BENCHMARKS.md.
bench: system-deps $(STAMP)
	$(BIN)/python bench/agent_overhead.py --seconds 60 --write BENCHMARKS.md
	$(BIN)/python bench/backup_vs_restic.py --size-gib 1 --write BENCHMARKS.md
	$(BIN)/python bench/health.py --runs 5 --write BENCHMARKS.md
	$(BIN)/python bench/alert_latency.py --write BENCHMARKS.md

## Regenerate the generated parts of docs/ (configuration table).
docs: $(STAMP)
	$(BIN)/python -m swarm_maint.docgen docs/configuration.md

clean:
	rm -rf $(VENV) tests/fixtures/build .mypy_cache .ruff_cache .pytest_cache
