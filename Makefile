# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench install clean

$(BIN)/fleet: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch from the machine's local wheels (no multi-GB download); pip resolves flwr's own Ray.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/fleet

install: $(BIN)/fleet

demo: $(BIN)/fleet
	$(BIN)/fleet run quickstart

test: $(BIN)/fleet
	$(BIN)/python -m pytest tests

lint: $(BIN)/fleet  # the rule selection and the type-check settings are in pyproject.toml
	$(BIN)/ruff check fleet strategies simulations tests
	$(BIN)/mypy

bench: $(BIN)/fleet  # the quick benchmarks; the full ones are listed in docs/benchmarks.md
	$(BIN)/python -m simulations.benchmarks.qat_step
	$(BIN)/python -m simulations.benchmarks.faults --quick --out bench-results/faults-quick.json
	$(BIN)/python -m simulations.benchmarks.scale --quick --out bench-results/scale-quick.json
	$(BIN)/python -m simulations.benchmarks.learning --quick --out bench-results/learning-quick.json
	$(BIN)/python -m simulations.benchmarks.single_device --quick --out bench-results/single-device-quick.json

clean:
	rm -rf $(VENV) runs .pytest_cache
