# Every target creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench reliability install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mes-demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The reliability and security suites at the sizes of quality-bars.md (about 50 minutes, R1 alone 32);
# writes docs/RELIABILITY.md. `make test` runs the same suites reduced.
reliability: $(STAMP)
	MES_RELIABILITY=full $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.run $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
