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
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
# deploy/worker/trigger talk to PREFECT_API_URL when it is set, else to the `make server` on this machine
PREFECT_LOCAL_API_URL = http://$(PREFECT_HOST):$(PREFECT_PORT)/api
# the work pool prefect.yaml deploys to ({{ $SLUICE_WORK_POOL }}); WORK_POOL=... on the command line wins
WORK_POOL ?= $(or $(SLUICE_WORK_POOL),sluice-process)
export SLUICE_WORK_POOL := $(WORK_POOL)
# prefect.yaml's cron: the environment's EXTRACT_SCHEDULE_CRON, else `.env`'s, else the default in models/settings.py
SCHEDULE_CRON = $(BIN)/python -c 'from models.settings import get_settings; print(get_settings().extract_schedule_cron)'

.PHONY: install migrate run replay test screenshots server deploy worker trigger api bench bench-api lint format typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version)'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	mkdir -p var
	$(BIN)/prefect server database upgrade -y >/dev/null
	touch $@

# Sluice's database (DATABASE_URL, or `.env`'s) to the code's schema revision; `make run` does it by itself
migrate: install
	$(BIN)/alembic -c $(CURDIR)/alembic.ini upgrade head

run: install
	$(BIN)/python -m dev.run

# the DLQ's open records judged again by today's rules and DEPARTMENTS_CSV, once (dev/replay.py);
# REASON=<rule> and RUN_ID=<run id> narrow it to the records that failed that rule or that run rejected
replay: install
	$(BIN)/python -m dev.replay $(if $(REASON),--reason '$(REASON)') $(if $(RUN_ID),--run-id '$(RUN_ID)')

test: install
	PREFECT_HOME=$(CURDIR)/var/prefect-test $(BIN)/python -m pytest $(PYTEST_ARGS)

# the console's pictures in docs/screenshots, taken by its browser tests (needs Debian's chromium)
screenshots: install
	SLUICE_SCREENSHOTS=$(CURDIR)/docs/screenshots PREFECT_HOME=$(CURDIR)/var/prefect-test $(BIN)/python -m pytest tests/console -q

server: install
	$(BIN)/prefect server start --host $(PREFECT_HOST) --port $(PREFECT_PORT)

deploy worker trigger: export PREFECT_API_URL ?= $(PREFECT_LOCAL_API_URL)

deploy: install
	@echo "Prefect API: $$PREFECT_API_URL, work pool: $(WORK_POOL)"
	$(BIN)/prefect work-pool inspect '$(WORK_POOL)' >/dev/null 2>&1 || $(BIN)/prefect work-pool create '$(WORK_POOL)' --type process
	cron="$$($(SCHEDULE_CRON))" && echo "schedule: $$cron (UTC)" && \
	  EXTRACT_SCHEDULE_CRON="$$cron" PWD="$(CURDIR)" $(BIN)/prefect --no-prompt deploy --all

worker: install
	$(BIN)/prefect worker start --pool '$(WORK_POOL)' --type process

trigger: install
	$(BIN)/prefect deployment run 'users-etl/daily' --watch

api: install
	$(BIN)/python -m api

bench: install
	$(BIN)/python -m bench.pipeline

bench-api: install
	$(BIN)/python -m bench.api

lint: install
	$(BIN)/ruff check flows tasks models api bench tests

format: install
	$(BIN)/ruff format flows tasks models api bench tests dev migrations
	$(BIN)/ruff check --fix flows tasks models api bench tests dev migrations

typecheck: install
	$(BIN)/mypy flows tasks models api

clean:
	rm -rf var .pytest_cache
