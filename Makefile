# Two commands do everything on a fresh machine: `make train` and `make test`.
# Each creates .venv when it is missing and installs nnlab into it.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.nnlab-installed
# A second environment with nnlab installed from its wheel (not editable): the journey tests
# (tests/test_journey.py) run its commands, so a wheel that misses files fails the suite.
WHEEL_VENV ?= .venv-wheel
WHEEL_STAMP := $(WHEEL_VENV)/.nnlab-installed
# The extras `make install` installs: the test suite covers sweeps, search, SLURM submission and
# the MLflow / W&B loggers.
EXTRAS ?= dev,docs,onnx,sweep,slurm,mlflow,wandb
ARGS ?=
PYTEST_ARGS ?=
# One pytest worker per core (pytest-xdist). --dist loadscope hands a worker a whole test module:
# a module-scoped fixture (a run trained once, then evaluated, predicted, exported by its tests)
# is built once, not once per worker, and the SLURM tests (one module) queue one at a time on
# the one-node cluster. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadscope)

.PHONY: install wheel-env train test test-fast bench lint format tensorboard docs docs-build clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	# nnlab's own sweeper replaced hydra-optuna-sweeper (which needs optuna<3): a venv made
	# before keeps it, and its configs would shadow hydra/sweeper=optuna
	$(BIN)/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

$(WHEEL_STAMP): $(STAMP) pyproject.toml $(shell find src -type f -not -name '*.pyc')
	rm -rf build dist
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	test -x $(WHEEL_VENV)/bin/python || $(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps dist/nnlab-*.whl
	# Its dependencies are $(VENV)'s, seen through a .pth file: a second copy of torch would
	# take another 6 GB of disk. The wheel's own files (code, configs) are the installed ones.
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(WHEEL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/nnlab-deps.pth"
	$(WHEEL_VENV)/bin/python -m pip uninstall --quiet --yes setuptools  # $(VENV) has the one torch needs
	$(WHEEL_VENV)/bin/python -m pip check
	rm -rf build
	touch $(WHEEL_STAMP)

## nnlab built as a wheel and installed into $(WHEEL_VENV), as a user installs it.
wheel-env: $(WHEEL_STAMP)

## Train the default experiment (sine_lstm, CPU, no download); pass overrides in ARGS="...".
train: $(STAMP)
	$(BIN)/nnlab-train $(ARGS)

## The whole test suite, one worker per core (real-data tests run when NNLAB_DATA_DIR points at
## the data; SLURM tests when a cluster answers).
test: $(STAMP) $(WHEEL_STAMP)
	NNLAB_JOURNEY_BIN=$(abspath $(WHEEL_VENV))/bin $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

## The suite without the tests marked slow (training to a metric bound, end-to-end runs of more
## than a few seconds, the installed-wheel journey) and without SLURM: a few minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not slurm and not full_run" $(PYTEST_ARGS)

## nnlab against a hand-written loop (scripts/bench.py); e.g. ARGS="configs=mnist_lstm epochs=3".
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(or $(ARGS),configs=all)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: $(STAMP)
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir outputs

## The documentation site (mkdocs.yml, docs/): served with live reload on http://127.0.0.1:8000.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

## The site built into site/, every warning (a broken link, a page missing from nav) an error.
docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache build dist site
