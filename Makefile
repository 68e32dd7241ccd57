# Sluice: every command a user or CI needs. `make run` and `make test` install first when .venv is missing.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_HOME ?= $(CURDIR)/var/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_UI_ENABLED ?= true
PREFECT_PORT ?= 4200
WORK_POOL ?= sluice-process

.PHONY: install run test server deploy worker trigger api bench bench-api lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version)'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	mkdir -p var
	$(BIN)/prefect server database upgrade -y >/dev/null
	touch $@

run: install
	$(BIN)/python -m flows.run_all

test: install
	PREFECT_HOME=$(CURDIR)/var/prefect-test $(BIN)/python -m pytest $(PYTEST_ARGS)

server: install
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: install
	$(BIN)/prefect work-pool inspect $(WORK_POOL) >/dev/null 2>&1 || $(BIN)/prefect work-pool create $(WORK_POOL) --type process
	$(BIN)/prefect --no-prompt deploy --all

worker: install
	$(BIN)/prefect worker start --pool $(WORK_POOL)

trigger: install
	$(BIN)/prefect deployment run 'users-etl/daily' --watch

api: install
	$(BIN)/python -m api

bench: install
	$(BIN)/python -m bench.pipeline

bench-api: install
	$(BIN)/python -m bench.api

lint: install
	$(BIN)/python -m compileall -q flows tasks models api tests

clean:
	rm -rf var .pytest_cache
