# The two commands of the README. Each creates .venv on first use and installs what is missing (idempotent:
# a stamp file records the installed lock, so a second call installs nothing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu

.PHONY: demo test lint install clean-runs

$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/selfimprove run demo --figures-dir figures

test: $(STAMP)
	$(BIN)/ruff check selfimprove tests notebooks bench
	$(BIN)/python -m pytest selfimprove tests

lint: $(STAMP)
	$(BIN)/ruff check selfimprove tests notebooks bench

clean-runs:
	rm -rf data/runs
