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

.PHONY: venv run worker demo test unit bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch from PyPI is a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Independent reference implementations for the loss cross-checks. --no-deps: they must not
	# replace our torch (torchdistill's loss module imports without torchvision).
	$(BIN)/pip install -q --no-deps torchdistill==1.1.5
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

run: venv
	@scripts/ensure-jail
	$(BIN)/kdserve up

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
