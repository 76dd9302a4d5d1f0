# kdserve — two commands on a fresh machine:
#   make run    set up .venv and start the service (API :8000 + worker + embedded Redis + SQLite);
#               installs bubblewrap for the teacher jail when it is missing (root + apt)
#   make test   set up .venv and run the whole test suite (starts Redis/PostgreSQL if they are down,
#               installs Debian's chromium for the dashboard test if it is missing)
#   make unit   set up .venv and run the unit tests: nothing running needed (no Redis, PostgreSQL,
#               server or network), under a minute
#   make demo   against a running service: distil a digits teacher end to end

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# pip's output while .venv is set up (build warnings and all), beside the service's own logs
# (`kdserve up` writes them to <KDSERVE_DATA_DIR>/logs/): shown, its end, only when a step fails
INSTALL_LOG := $(or $(KDSERVE_DATA_DIR),.kdserve)/logs/install.log
# `make run ARGS=-v`: every process's output on the terminal, not just the banner (kdserve up --help)
ARGS ?=

# $(call logged,COMMAND): run COMMAND with its output appended to INSTALL_LOG; if it fails, say
# which step it was, show the log's last lines and stop
logged = $(1) >>$(INSTALL_LOG) 2>&1 || { echo "make: this failed: $(1)"; tail -n 30 $(INSTALL_LOG); \
                                         echo "(all of its output: $(INSTALL_LOG))"; exit 1; } >&2

.PHONY: venv run worker demo test unit bench clean

# torch first and pinned: an unpinned torch from PyPI is a multi-GB CUDA build. torchdistill:
# independent reference implementations for the loss cross-checks; --no-deps: they must not
# replace our torch (torchdistill's loss module imports without torchvision).
$(STAMP): pyproject.toml Makefile
	@umask 077 && mkdir -p $(dir $(INSTALL_LOG)) && : > $(INSTALL_LOG)
	@echo "setting up $(VENV) with pip (minutes the first time; its output: $(INSTALL_LOG))"
	@test -x $(BIN)/python || $(call logged,$(PYTHON) -m venv $(VENV))
	@$(call logged,$(BIN)/python -m pip install --upgrade pip)
	@$(call logged,$(BIN)/pip install torch==2.13.0)
	@$(call logged,$(BIN)/pip install -e '.[dev]')
	@$(call logged,$(BIN)/pip install --no-deps torchdistill==1.1.5)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

run: venv
	@scripts/ensure-jail
	@$(BIN)/kdserve up $(ARGS)

worker: venv
	$(BIN)/kdserve worker

# Against a running service (`make run` in another terminal, or KDSERVE_URL/KDSERVE_API_KEY):
# train a digits teacher here, distil it with a live progress bar, download and check the student.
demo: venv
	$(BIN)/kdserve demo

test: venv
	scripts/ensure-services
	scripts/ensure-jail
	$(BIN)/python -m pytest -q -p no:cacheprovider

# api_tests/unit only: no sockets, no servers, no torch subprocesses (those are in api_tests/integration)
unit: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider api_tests/unit

bench: venv
	scripts/ensure-services
	$(BIN)/python -m bench.spine

clean:
	rm -rf $(VENV) .kdserve *.egg-info
