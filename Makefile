# One venv, made on demand; every target installs what it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Editable installs keep setuptools' egg-info out of the source tree: setuptools reads
# DIST_EXTRA_CONFIG as one more setup.cfg, and this one points egg_info into the venv.
EGG_CFG := $(VENV)/egg-info.cfg
PIP_EDITABLE := DIST_EXTRA_CONFIG=$(abspath $(EGG_CFG)) $(PY) -m pip install --quiet -e

.PHONY: demo test lint conformance package-check bench bench-quick clean

$(STAMP): pyproject.toml gsi/_version.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	mkdir -p $(VENV)/egg-info
	printf '[egg_info]\negg_base = %s\n' '$(abspath $(VENV)/egg-info)' > $(EGG_CFG)
	$(PIP_EDITABLE) '.[test,dev,progress]'
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

# Build the sdist and wheel outside the tree, twine check --strict, check their file lists,
# install the wheel into a fresh venv and copy a file between the installed commands.
package-check: $(STAMP)
	.ci/package-check $(PY)

# The benchmark suite (benchmarks/README.md): separate processes over Unix sockets and TCP,
# same-run baselines, results in benchmarks/results/. The chart needs the bench extra.
bench: $(STAMP)
	$(PIP_EDITABLE) '.[bench]'
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PIP_EDITABLE) '.[bench]'
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) build *.egg-info
