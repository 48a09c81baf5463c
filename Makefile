# The two commands of the README: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test processes: most tests wait on a daemon's quiet periods, so more than the cores
JOBS ?= 3

.PHONY: demo test test-fast lint typecheck browser bench bench-scale soak clean

$(STAMP): pyproject.toml flatd/engine/_kernel.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@$(BIN)/python -c 'from flatd.engine import kernel; print(kernel.build_note())'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flatd.demo

# the page's real-browser test needs chromium: installed from the distribution when missing
# (as root); without it that test skips, except under CI=true where it fails
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "make: no chromium; the page's browser test will skip"

test: $(STAMP) browser
	$(BIN)/ruff check flatd tests benchmarks
	$(BIN)/ruff format --check flatd tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(JOBS)

# everything but the suites that run the real daemon or a browser in a subprocess (marked
# `slow`): under a minute, for the edit-test loop
test-fast: $(STAMP)
	$(BIN)/ruff check flatd tests benchmarks
	$(BIN)/ruff format --check flatd tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(JOBS) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check flatd tests benchmarks
	$(BIN)/ruff format --check flatd tests benchmarks
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy flatd

soak: $(STAMP)
	FLATD_SOAK_SECONDS=$${FLATD_SOAK_SECONDS:-1800} $(BIN)/python -m pytest -q -s tests/faults/test_soak.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# the daemon on months of data, main against this tree (makes ~9 GB of small files once)
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --acceptance --json bench-data/scale/results.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
