# The two entry points of the README: `make demo` and `make test` (`make check`: the static checks CI
# runs first). All set up .venv first.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo check test bench mutation clean

setup: .venv/.installed

.venv/.installed: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	.venv/bin/omad demo

# Package layers (import-linter contracts), lint and format (ruff), types (mypy): pyproject.toml.
check: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/training.py

# Mutation testing of the math and the serving edge (a few hours; on purpose, not in CI).
mutation: setup
	$(PY) bench/mutation.py

clean:
	rm -rf .venv runs exports
