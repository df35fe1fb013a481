# make demo  -- run a real service under wrapperd and show what it can really do
# make test  -- the whole test suite, installing what it needs: lint, unit + privileged
#              tests as root, then the privileged suites again in a rootless container
# make bench -- benchmarks (bench/): launch cost, overlapping launches' CPU, resident
#   cost, seccomp cost
# make daemons-matrix -- run the real daemons (tests/services), write docs/daemons.md's matrix
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: deps venv test unit privileged rootless demo lint bench clean daemons-matrix

deps:
	@sh scripts/install-deps

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -I -m sandbox.launchers >/dev/null   # wrapperd (static), sandbox (#!python -I)
	@touch $@

# The static helper beside targets (sandbox/helper.c), rebuilt when its source changes.
sandbox/wrapperd-helper: sandbox/helper.c | $(VENV)/.installed
	$(PY) -I -m sandbox.launchers >/dev/null

venv: $(VENV)/.installed sandbox/wrapperd-helper

test: venv lint
	$(PY) -m pytest -q tests
	bash tests/rootless/run

rootless: venv
	bash tests/rootless/run

unit: venv
	$(PY) -m pytest -q tests/unit

privileged: venv
	$(PY) -m pytest -q tests/privileged

# The outcomes of a whole run of tests/services, written into docs/daemons.md (between its
# markers) whether or not they are the expected ones: a failing cell fails the run too.
daemons-matrix: venv
	WRAPPERD_DAEMONS_MATRIX=write $(PY) -m pytest -q tests/services

demo: venv
	$(PY) demo.py

lint: venv ## ruff over everything, mypy over sandbox/ and wrapperd/
	$(PY) -m ruff check sandbox wrapperd tests bench demo.py examples
	$(PY) -m mypy

bench: venv
	$(PY) bench/run.py
	$(PY) bench/throughput.py
	$(PY) bench/resident.py
	$(PY) bench/seccomp.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
