# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
# Both create .venv and install the package (with test extras) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test fuzz bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  # the demo: also the completed NCT01325207 (the service's default is the enrolling trials only)
	CDS_TRIALS=NCT06462092,NCT01325207 $(BIN)/cds-service serve --host 127.0.0.1 --port 8080

demo: $(STAMP)
	$(BIN)/cds-service evaluate --trial all --as-of 2026-06-15 --format text cds_service/demo/patients.json

test: $(STAMP)
	$(BIN)/pytest

fuzz: $(STAMP)  # the full fuzz budget (10,000+ requests); `make test` runs a fixed 1,500+
	CDS_FUZZ_BUDGET=full $(BIN)/pytest tests/test_fuzz.py

bench: $(STAMP)
	$(BIN)/python bench/engine_bench.py
	$(BIN)/python bench/hook_bench.py
	$(BIN)/python bench/memory_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
