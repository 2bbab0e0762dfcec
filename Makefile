# buscad — `make demo` runs the main job, `make test` runs the tests.
# Both create .venv when missing and install the project into it (CPU torch pinned).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.buscad-installed

.PHONY: demo test lint format install clean bench claims

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, from the pinned CPU wheel, so nothing else can pull a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "torch==2.13.0" "torchvision==0.28.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	@if $(PY) -m pip list 2>/dev/null | grep -qiE '^nvidia-|^triton '; then \
	  echo "error: CUDA packages were pulled into $(VENV); refusing to continue" >&2; exit 1; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/buscad demo --out runs/demo/data
	$(VENV)/bin/buscad study run configs/demo.yaml -o runs/demo/study

# Both cores: one worker per core, each test file on one worker (its module fixtures run once).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# Every number of README.md, docs/ and the CHANGELOG's [Unreleased] section must be held by a
# file in benchmarks/results/ (rules: tests/claims.py); lists each one that is not.
claims: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_claims.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
