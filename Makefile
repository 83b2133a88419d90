# `make test`: create .venv if missing, install the pinned set, run the fast suite.
# `make test-all`: the same plus the slow tests.   `make demo`: sample a video.
# `make lint`: ruff's checks and format check (`make format` applies them).
# `make docs`: regenerate docs/configuration.md from the config files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On the project machines torch's CPU wheel lies in /opt/wheels (a plain `torch` is CUDA, GBs).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(PY) -m pip install -q --disable-pip-version-check $(FIND_LINKS)
# Two workers: JAX compiles are single-threaded, so an idle 2-core machine runs `make test`
# in about 17.5 min (2026-12-06: 13 min 56 s for the fast tests, then 3 min 32 s for the 8
# multi-process jobs).
# PYTEST_FLAGS="-n 0" runs serially.
PYTEST_FLAGS ?= -n 2

PROMPT ?= a red 3 moving left
DEMO_OUTPUT ?= outputs/demo.mp4

.PHONY: install test test-all lint format demo docs clean

$(VENV)/.installed: requirements/requirements.txt requirements/reference.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/requirements.txt -r requirements/reference.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# What sampling needs (no torch/transformers reference set): the demo's quicker set-up.
$(VENV)/.installed-run: requirements/requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/requirements.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-run
	$(PY) -m imagen_video_jax.sample --config=configs/digits.py --prompt="$(PROMPT)" \
	    --output=$(DEMO_OUTPUT)

# Multi-process jobs must meet within JAX's timeouts: they run alone, after the rest.
test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not multiprocess" $(PYTEST_FLAGS)
	$(PY) -m pytest -q -m "multiprocess and not slow" -n 0

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "not multiprocess" $(PYTEST_FLAGS)
	$(PY) -m pytest -q -m multiprocess -n 0

# Lint and format check (settings in pyproject.toml); `make format` rewrites in place.
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The configuration reference, generated from configs/*.py (tests/test_docs.py checks it).
docs: $(VENV)/.installed-run
	$(PY) docs/gen_config_reference.py

clean:
	rm -rf $(VENV) build *.egg-info
