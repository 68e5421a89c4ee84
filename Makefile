# One venv, made on demand; every target installs what it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint conformance bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,progress]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m host_sim.demo

test: $(STAMP)
	$(PY) -m pytest -q

# host-sim check against gsi-receiver in both profiles (docs/conformance.md).
conformance: $(STAMP)
	.ci/conformance

lint: $(STAMP)
	$(VENV)/bin/ruff check gsi host_sim tests benchmarks
	$(VENV)/bin/mypy --strict gsi host_sim

# The benchmark suite (benchmarks/README.md): separate processes over Unix sockets and TCP,
# same-run baselines, results in benchmarks/results/. The chart needs the bench extra.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) build *.egg-info
