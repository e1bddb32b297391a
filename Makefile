# digitpairs: the front door. `make help` lists the targets.
# Everything runs in the virtual environment .venv (enter it with `source .venv/bin/activate`).

PY      ?= .venv/bin/python
VENV    := .venv
STAMP   := $(VENV)/.install-stamp
ARGS    ?=
SWEEP   ?=

.PHONY: help install train test test-fast lint format test-slurm sweep grid search study beyond pretrained report tensorboard bench clean demo test-demo test-browser

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project and its pinned dependencies from the package index (about 3 GB the first time; quick when done already)

train: install  ## train ws_aux for 50 epochs on MNIST pairs (ARGS="model=convnet ...")
	$(PY) train.py model=ws_aux $(ARGS)

lint: install  ## ruff: lint and check the formatting (the settings are in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## ruff: fix what it can and format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install  ## run the test suite
	$(PY) -m pytest -q -n 2 -m "not browser" $(ARGS)  # two workers (pytest-xdist): the tests spend half their time in one-thread subprocesses

test-fast: install  ## the suite without its slow tests (those that train or run the entry points): about a minute
	$(PY) -m pytest -q -n 2 -m "not slow and not browser" $(ARGS)

test-slurm: install  ## start a one-node SLURM cluster here (root, Debian), run the SLURM tests, stop it (scripts/test-slurm.sh)
	PY=$(PY) scripts/test-slurm.sh $(ARGS)

sweep: install  ## a multirun: make sweep ARGS="optim.lr1=0.01,0.09 loss.alpha=0.5,0.75"
	$(PY) train.py -m $(ARGS)

tensorboard: install  ## TensorBoard on every run and sweep under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs/runs outputs/multirun .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

PLAN ?= $(shell $(PY) -m digitpairs.sweeps.launcher_plan $(PLAN_FOR) $(ARGS) 2>/dev/null)
study: PLAN_FOR = experiment=study
grid: PLAN_FOR = experiment=grid
beyond: PLAN_FOR = experiment=beyond

grid: install  ## the study's grid search for one model on the validation split (MODEL=ws_aux)
	$(PY) train.py -m experiment=grid model=$(or $(MODEL),ws_aux) $(PLAN) $(ARGS)

search: install  ## an Optuna search of lr1, lr2, alpha, gamma on the validation split (MODEL=ws_aux); again: it continues
	$(PY) train.py -m hparams_search=optuna model=$(or $(MODEL),ws_aux) $(PLAN) $(ARGS)

study: install  ## 3 models x 15 seeds x 50 epochs, then the report (ARGS="model=convnet,ws,ws_aux,aux")
	$(PY) train.py -m experiment=study $(PLAN) $(ARGS)

beyond: install  ## the best model (recipe=beyond) and ws_aux, 15 seeds each, then the report
	$(PY) train.py -m experiment=beyond $(PLAN) $(ARGS)

pretrained: install  ## retrain the shipped models (recipe=beyond without its second member, and ws_aux; seed 0) into pretrained/
	rm -rf outputs/pretrained
	$(PY) train.py experiment=beyond recipe=beyond model.second=none seed=0 threads=1 hydra.run.dir=outputs/pretrained/beyond
	$(PY) train.py experiment=beyond recipe=study seed=0 threads=1 hydra.run.dir=outputs/pretrained/ws_aux
	$(PY) -m digitpairs.inference.pretrained outputs/pretrained

DEMO_EXTRA = @$(PY) -c 'import gradio, selenium' 2>/dev/null || $(VENV)/bin/pip install -q --disable-pip-version-check -e '.[demo]'

demo: install  ## the web page where you draw two digits, on http://127.0.0.1:7860 (ARGS="--port 8000 --model <ckpt>")
	$(DEMO_EXTRA)
	$(PY) -m digitpairs.inference.demo $(ARGS)

test-demo: install  ## the demo's server over HTTP: foreign Host and Origin, a burst, its files (installs the demo extra; no browser)
	$(DEMO_EXTRA)
	$(PY) -m pytest -q -s tests/test_demo_server.py tests/test_demo_cli.py tests/test_demo_threads.py $(ARGS)

test-browser: install  ## the demo in headless Chromium (apt-installs chromium and chromium-driver as root; about 10 min)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { test "$$(id -u)" = 0 || { echo "test-browser: needs chromium and chromium-driver (apt-get install chromium chromium-driver, as root)"; exit 2; }; \
	    export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium chromium-driver >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }
	$(DEMO_EXTRA)
	$(PY) -m pytest -q -s tests/test_browser.py tests/test_demo_server.py $(ARGS)

report: install  ## (re)build the report of a sweep: make report SWEEP=outputs/multirun/<folder>
	$(PY) -m digitpairs.sweeps.report $(or $(SWEEP),$(lastword $(sort $(wildcard outputs/multirun/*))))

bench: install  ## the speed benchmark: Lightning vs bare PyTorch loops (benchmarks/speed/training_loop.py)
	$(PY) benchmarks/speed/training_loop.py $(ARGS)
