# Entry points: `make demo` and `make test` (README); `make check`, the static checks CI runs first;
# `make docs`, the documentation site. All set up .venv first.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo check docs test bench mutation clean

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

# The site (mkdocs.yml), built with warnings as errors; the `docs` extra is installed on first use.
docs: .venv/.docs-installed
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

.venv/.docs-installed: .venv/.installed pyproject.toml constraints.txt
	.venv/bin/pip install -q -c constraints.txt -e ".[docs]"
	touch $@

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.training

# Mutation testing of the math and the serving edge (a few hours; on purpose, not in CI).
mutation: setup
	$(PY) -m bench.mutation

clean:
	rm -rf .venv runs exports site
