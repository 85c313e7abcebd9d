# The two entry points of the README: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test bench mutation clean

setup: .venv/.installed

.venv/.installed: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	.venv/bin/omad demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/training.py

# Mutation testing of the math and the serving edge (about an hour; on purpose, not in CI).
mutation: setup
	$(PY) bench/mutation.py

clean:
	rm -rf .venv runs exports
