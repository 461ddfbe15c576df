# `make demo` and `make test` create/refresh .venv themselves. The install step re-runs only when
# pyproject.toml or this Makefile changes (stamp file), so repeated calls are fast.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.isplab-installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH_PIN)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/isplab demo --output runs/demo --overwrite

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
