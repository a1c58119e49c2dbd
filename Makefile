# crm_pipelines: the commands a newcomer needs.
#   make demo   set up, generate demo data, materialise the whole graph, print a summary
#   make test   set up, run the whole test suite (PostgreSQL tests included)
#   make dev    open the Dagster UI at http://127.0.0.1:3000
#   make bench  run the benchmarks; results go to docs/benchmarks.md
#   make crm-server  the local development CRM on http://127.0.0.1:8766 (for pushes from the UI)
#   make brevo-server  the local development marketing tool (Brevo v3) on http://127.0.0.1:8767
#   make prod-local  the production profile on one machine: PostgreSQL, dagster-daemon, dagster-webserver
#                    (DEMO_DATA=1: demo data into an empty landing zone)
#   make celery-worker  one Celery worker for CRM_EXECUTOR=celery (needs CRM_CELERY_BROKER, CRM_CELERY_BACKEND)
#   make screenshots    refresh docs/screenshots/ from the UI test (headless Chromium)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DAGSTER_YAML ?= dagster.yaml

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export GX_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

.PHONY: install demo dev test bench sql clean crm-server brevo-server prod-local system-deps celery-worker screenshots

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
		{ echo "Python 3.11 or newer is needed; run e.g. 'make PYTHON=python3.12 demo'"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: $(DAGSTER_YAML)
	@mkdir -p $(DAGSTER_HOME)
	cp $(DAGSTER_YAML) $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m crm_pipelines.demo run

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Debian packages the end-to-end tests drive (Chromium for the UI test, Redis as the Celery broker).
# Installed when missing and possible (root and apt-get); otherwise those tests skip and say why.
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing (Debian packages for the end-to-end tests)"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
				>/dev/null || echo "could not install$$missing: the tests that need them will skip"; \
		else echo "missing$$missing and no root/apt-get: the tests that need them will skip"; fi; \
	fi

# Four workers on two cores: the longest tests mostly wait on the processes they start. Tests are handed out
# one at a time, so the long ones (sorted first, crm_pipelines_tests/conftest.py) start on different workers.
test: install system-deps
	$(PY) -m pytest -n 4 --maxschedchunk 1

bench: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PY) -m benchmarks.run

# DEMO_DATA=1 fills an empty landing zone with generated demo data first (DEMO_DATA=5000: that many contacts).
prod-local: install
	$(PY) -m crm_pipelines.devtools.prod_local --port 3000 $(if $(DEMO_DATA),--demo-data $(if $(filter 1,$(DEMO_DATA)),2000,$(DEMO_DATA)))

# One worker process per call; start as many as there are cores to spare (docs/operations.md).
celery-worker: install $(DAGSTER_HOME)/dagster.yaml
	@test -n "$$CRM_CELERY_BROKER" -a -n "$$CRM_CELERY_BACKEND" || \
		{ echo "set CRM_CELERY_BROKER and CRM_CELERY_BACKEND, e.g. redis://127.0.0.1:6379/0 and /1"; exit 1; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m dagster_celery.cli worker start -A dagster_celery.app \
		-y celery_worker.yaml -i crm_pipelines.definitions -- --concurrency=1 --max-tasks-per-child=1

screenshots: install system-deps
	CRM_SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest -q crm_pipelines_tests/ops/test_ui.py

crm-server: install
	$(PY) -m crm_pipelines.devtools.crm_server --db .crm_data/crm_server.db --port 8766

brevo-server: install
	$(PY) -m crm_pipelines.devtools.brevo_server --port 8767 --state .crm_data/brevo_server.json

sql: install
	$(PY) -m crm_pipelines.devtools.ddl sql

clean:
	rm -rf .crm_data .dagster_home data/landing .pytest_cache
