# Two entry points for a new machine: `make demo` and `make test`. Both create the virtualenv if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_ARGS ?=
# Sleeping instead of spinning OpenMP waits: see pipelines/cli.py (torch runs ~100x slower otherwise when
# another process holds a core).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bifusion pipeline run --local --config demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

clean-demo:
	rm -rf bifusion-work
