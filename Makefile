# Two entry points for a new machine: `make demo` and `make test`. Both create the virtualenv if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_ARGS ?=
# Sleeping instead of spinning OpenMP waits: see pipelines/cli.py (torch runs ~100x slower otherwise when
# another process holds a core).
export OMP_WAIT_POLICY ?= PASSIVE

# Stage image: make images REGISTRY=registry.example.com/ml TAG=0.1.0 (PUSH=1 also pushes it).
REGISTRY ?= ghcr.io/bifusion
TAG ?= 0.1.0
IMAGE := $(REGISTRY)/bifusion-pipeline:$(TAG)
# The chart's files/pipeline.yaml is compiled with these arguments (tests/deploy/test_chart.py compiles the same).
CHART_PIPELINE_ARGS := --cluster cluster/default --set storage.root=s3://bifusion/store

.PHONY: demo test install clean-demo images chart-pipeline

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,spconv]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bifusion pipeline run --local --config demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

clean-demo:
	rm -rf bifusion-work

images:
	docker build -f docker/Dockerfile --build-arg VERSION=$(TAG) -t $(IMAGE) .
	if [ -n "$(PUSH)" ]; then docker push $(IMAGE); fi

chart-pipeline: $(STAMP)
	$(BIN)/bifusion pipeline compile $(CHART_PIPELINE_ARGS) --output charts/bifusion-pipeline/files/pipeline.yaml
