# pspnet-pipeline: the two set-up commands are `make run` and `make test` (see README.md).
# Every target installs what is missing first (a virtual environment in .venv from the
# lockfile), so a fresh clone needs only Python 3.11 and make.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
PORT ?= 5000
# `make schedule`: the Prefect server it serves the retraining deployment on (started on
# 127.0.0.1:$(PREFECT_PORT) unless PREFECT_API_URL already answers), and how long it may take to start.
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
PREFECT_START_TIMEOUT ?= 180
PREFECT_SERVER_LOG ?= $(CURDIR)/.prefect/server.log

export PATH := $(BIN):$(PATH)
# Prefect keeps its state in the project, not the user's home; no telemetry offline.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export DVC_NO_ANALYTICS ?= 1
export MPLBACKEND ?= Agg

.PHONY: help install run flow schedule deploy worker watch check test test-all bench ablation import-data run-camvid readme ui prefect-ui plots lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the locked dependencies (only what is missing)

# --compile-bytecode: every test spawns Python processes (DVC stages, servers, torchrun) that
# import torch / mlflow; without .pyc files (e.g. PYTHONDONTWRITEBYTECODE=1, set in many CI
# images) each one recompiles them, about 7 s of CPU a process.
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found " + sys.version.split()[0] + "); set PYTHON=/path/to/python3.11")'
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps -e .
	@touch $@

run: install  ## run the whole pipeline on the embedded dataset through DVC (dvc repro)
	dvc repro

flow: install  ## run the same pipeline as a Prefect flow (ephemeral Prefect server)
	python -m pipelines.training

# `make schedule` starts the server with `set -m` (its own process group), so Ctrl-C reaches only
# `pipelines.schedule`: it pauses the schedules while the server still answers, then the EXIT
# trap stops the server it started (a server that already answered is left running).
# PREFECT_HEALTHY answers 0 when the Prefect API at $(PREFECT_API_URL) is healthy.
PREFECT_HEALTHY = python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$(PREFECT_API_URL)/health" >/dev/null 2>&1

schedule: install  ## serve the retraining deployment (cron + new-data check) on a local Prefect server (PREFECT_PORT=4200)
	@mkdir -p "$(dir $(PREFECT_SERVER_LOG))"; \
	if $(PREFECT_HEALTHY); then \
	  echo "schedule: using the Prefect server at $(PREFECT_API_URL)"; \
	elif [ "$(PREFECT_API_URL)" != "http://127.0.0.1:$(PREFECT_PORT)/api" ]; then \
	  echo "schedule: PREFECT_API_URL=$(PREFECT_API_URL) does not answer; start that server, or unset PREFECT_API_URL to get a local one" >&2; exit 1; \
	else \
	  echo "schedule: starting prefect server on 127.0.0.1:$(PREFECT_PORT) (log: $(PREFECT_SERVER_LOG))"; \
	  set -m; prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) >"$(PREFECT_SERVER_LOG)" 2>&1 & server=$$!; set +m; \
	  trap 'echo "schedule: stopping the prefect server"; kill -- -$$server 2>/dev/null; wait $$server 2>/dev/null' EXIT; \
	  trap 'exit 130' INT TERM HUP; \
	  for second in $$(seq $(PREFECT_START_TIMEOUT)); do \
	    $(PREFECT_HEALTHY) && break; \
	    kill -0 $$server 2>/dev/null || { echo "schedule: prefect server exited; see $(PREFECT_SERVER_LOG):" >&2; tail -20 "$(PREFECT_SERVER_LOG)" >&2; exit 1; }; \
	    sleep 1; \
	  done; \
	  $(PREFECT_HEALTHY) || { echo "schedule: prefect server not healthy after $(PREFECT_START_TIMEOUT) s; see $(PREFECT_SERVER_LOG) (raise PREFECT_START_TIMEOUT)" >&2; exit 1; }; \
	  echo "schedule: prefect server ready: $(PREFECT_API_URL) (UI: http://127.0.0.1:$(PREFECT_PORT))"; \
	fi; \
	PREFECT_API_URL="$(PREFECT_API_URL)" python -m pipelines.schedule

# `make deploy` / `make worker` / `make watch` need a Prefect server that stays up: the one at
# $(PREFECT_API_URL) (`make prefect-ui` starts one on 127.0.0.1:$(PREFECT_PORT)). Without one they stop
# with that fix. The pool, deployments and schedules come from prefect.yaml, generated from params.yaml.
# WORK_QUEUE: the queue a node's worker polls (multi-node training); empty: every queue of the pool.
WORK_QUEUE ?=
PREFECT_REQUIRED = $(PREFECT_HEALTHY) || { echo "$@: no Prefect server answers at $(PREFECT_API_URL); start one (make prefect-ui, in another terminal) or set PREFECT_API_URL" >&2; exit 1; }

deploy: install  ## create the work pool and deploy prefect.yaml (retraining: cron, data check, new-data trigger; multi-node training)
	@$(PREFECT_REQUIRED)
	PREFECT_API_URL="$(PREFECT_API_URL)" python -m pipelines.deployment deploy

worker: install  ## start a worker of the work pool, running flow runs in this checkout (WORK_QUEUE=node-1: one queue)
	@$(PREFECT_REQUIRED)
	PREFECT_API_URL="$(PREFECT_API_URL)" python -m pipelines.deployment worker $(if $(WORK_QUEUE),--work-queue $(WORK_QUEUE))

watch: install  ## watch the data folders; new files emit a Prefect event (the deployment retrains once per burst)
	@$(PREFECT_REQUIRED)
	PREFECT_API_URL="$(PREFECT_API_URL)" python -m pipelines.watch

# Test tiers (markers in pyproject.toml): `make check` runs the unit tests (target: 3 min on 2 cores);
# `make test`, what CI runs (.ci/run), adds the `integration` tests: real DVC / MLflow / Prefect /
# torchrun end to end (target: 12 min on 2 cores); `make test-all` adds the `slow` ones (benchmarks, compile).
# PYTEST_ARGS passes options on, e.g. PYTEST_ARGS="-x -k resume".
PYTEST_ARGS ?=
# pytest exits 5 when it collected no test (a marker or -k selecting nothing): a failure, said so.
NO_TESTS_IS_FAILURE = || { status=$$?; [ $$status -ne 5 ] || echo "make: pytest collected no tests (exit 5)" >&2; exit $$status; }

# pytest-xdist: one worker per core (PYTEST_WORKERS=0 runs in this process), one test module per
# work unit (tests/conftest.py), so module-scoped servers and pipeline runs start once; units
# start longest first (tests/conftest.py orders them; xdist's own reorder is turned off).
PYTEST_WORKERS ?= auto
XDIST = -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

check: install  ## the fast tier: unit tests, no `integration` / `slow` ones (target: 3 min on 2 cores)
	pytest -m "not integration and not slow" $(XDIST) $(PYTEST_ARGS) $(NO_TESTS_IS_FAILURE)

test: install  ## the suite CI runs: unit and `integration` tests, not `slow` ones (target: 12 min on 2 cores)
	pytest -m "not slow" --durations=15 $(XDIST) $(PYTEST_ARGS) $(NO_TESTS_IS_FAILURE)

test-all: install  ## every test, the `slow` ones (benchmarks, torch.compile on CUDA) included
	pytest --durations=15 $(XDIST) $(PYTEST_ARGS) $(NO_TESTS_IS_FAILURE)

# On a machine with CUDA, `make bench` first measures the GPU (bench/gpu_train.py: fp32 / bf16 /
# channels_last / compile, images/s, peak memory, MFU; about 15 min) into $(GPU_REPORT), which
# the report's GPU section shows.
GPU_REPORT ?= docs/results/gpu-h100.json
# Where CUDA is present `make bench` also measures GPU inference (bench/gpu_inference.py) into this.
GPU_INFERENCE_REPORT ?= docs/results/gpu-h200-inference.json
HAS_CUDA = python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'

bench: install  ## benchmarks with ratios against peers -> docs/benchmarks.md + .json (about 22 min on 2 CPU cores; BENCH_ARGS="--quick" / "--only training,inference"; GPU figures first where CUDA is present)
	@if $(HAS_CUDA); then \
	  python bench/gpu_train.py --phase eager --out .bench-gpu-eager.json && \
	  python bench/gpu_train.py --phase compile --variants bf16+cl+compile --batches 16 8 --out .bench-gpu-compile.json && \
	  python bench/gpu_train.py --render .bench-gpu-eager.json .bench-gpu-compile.json --merged $(GPU_REPORT) --markdown $(GPU_REPORT:.json=.md) && \
	  python bench/gpu_inference.py --out $(GPU_INFERENCE_REPORT) && \
	  python bench/gpu_inference.py --render $(GPU_INFERENCE_REPORT) --markdown $(GPU_INFERENCE_REPORT:.json=.md); \
	fi
	python -m bench $(BENCH_ARGS)

# The default: dilated FCN vs PSPNet on the context-hard scenes, 3 seeds (about 60 min on 2 cores).
# Every row: ABLATION_ARGS="--preset context-hard --seed 0 --seed 1 --seed 2" (a GPU runs it all).
ABLATION_ARGS ?= --preset context-hard --row fcn --row pspnet --seed 0 --seed 1 --seed 2

ablation: install  ## the paper's ablations with statistics as dvc experiments -> docs/ablation.md (about 60 min on 2 cores)
	pspnet ablation $(ABLATION_ARGS)

import-data: install  ## bring data.source (params.yaml) under DVC: dvc import-url into data/raw, or dvc update
	pspnet import-data

run-camvid: install  ## CamVid from scratch in 30 min on 2 CPU cores -> docs/results/camvid-cpu.md (CAMVID=/path/to/CamVid)
	pspnet experiment camvid-cpu $(if $(CAMVID),--set data.source.location=$(CAMVID))

readme: install  ## rewrite the README's generated result lines from docs/results/*.json
	python -c "from pspnet.presets import sync_readme; print('rewritten:', sync_readme('.'))"

# MLflow 3.17's UI opens on its GenAI view whatever the experiment's kind says; the link below
# (or its "Model training" switch, top left, which the browser then remembers) opens the runs.
ui: install  ## open the MLflow UI on http://127.0.0.1:$(PORT) (runs: the link it prints)
	@echo "MLflow UI, training runs: http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

prefect-ui: install  ## open the Prefect UI (flow runs, deployments, schedules) on http://127.0.0.1:$(PREFECT_PORT)
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# `make plots` draws the workspace; REVS="exp-a exp-b" (experiments, commits) draws them on one chart each.
REVS ?=
plots: install  ## DVC's data plots (loss, val mIoU, per-class IoU, confusion) -> dvc_plots/index.html, offline
	$(if $(strip $(REVS)),dvc plots diff $(REVS),dvc plots show) -o dvc_plots

lock:  ## re-resolve requirements.lock from pyproject.toml (needs uv)
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 -o requirements.lock

clean:  ## remove pipeline outputs (not the MLflow store, not the venv)
	rm -rf data/prepared models metrics plots reports
