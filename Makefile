# svdserve: `make demo` and `make test` work on a fresh clone with nothing installed by hand.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean compose-check

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,xarray]'
	@touch $(STAMP)

install: $(STAMP)

# the demo's embedded cluster has a Dask dashboard (bokeh), linked from the pages
DASHBOARD_STAMP := $(VENV)/.dashboard
$(DASHBOARD_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,xarray,dashboard]'
	@touch $(DASHBOARD_STAMP)

demo: $(DASHBOARD_STAMP)
	$(PY) -m svdserve._demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/compare.py

# docker-compose.yml run for real on a Docker engine (../shared/docker/local-engine.sh
# sets one up): build, scale under a running job, lose a worker, check the
# result, `down -v` at the end. The build args default from the environment:
# PYTHON_IMAGE (base image), PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST
# (pip's package index inside the build; passed only when set).
# COMPOSE_CHECK_ARGS: e.g. --measure-scaling, --no-cache, --keep.
PYTHON_IMAGE ?= python:3.11-slim
compose-check: $(STAMP)
	PYTHON_IMAGE='$(PYTHON_IMAGE)' PIP_INDEX_URL='$(PIP_INDEX_URL)' \
	PIP_EXTRA_INDEX_URL='$(PIP_EXTRA_INDEX_URL)' PIP_TRUSTED_HOST='$(PIP_TRUSTED_HOST)' \
	$(PY) -m tests.scaleout.compose_check $(COMPOSE_CHECK_ARGS)

# also the demo's data (.demo/, ~300 MB)
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .demo
