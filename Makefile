# Custos developer tasks.  `make help` lists them.
#
# Local services (PostgreSQL + Azurite) come from scripts/devservices.py (stdlib-only python3).
# `devservices.py up --profile P` writes two files with the same settings:
#   .local/P/services.env  raw KEY=VALUE lines (for python / dotenv);
#   .local/P/services.sh   `export KEY='VALUE'` lines, shell-quoted.
# Recipes load the settings with `. .local/P/services.sh`: the values contain `;` and `=`
# (the storage connection string), so the raw services.env must not be sourced by a shell.
# To get the same settings in your own shell:  . .local/run/services.sh

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements.stamp
# checkov (requirements-infra.txt) pins packaging<24, which pytest 9 cannot share: it gets
# its own venv; tests/test_bicep.py runs it from there.
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.requirements.stamp
NODE_STAMP := node_modules/.package-lock.json
DEVSERVICES := $(PYTHON) scripts/devservices.py
LOCAL := .local
PORT ?= 7071
PYTEST_ARGS ?= -q
PROFILE ?= run

.PHONY: help venv infra-venv node console run test services services-down services-status services-destroy lint validation audit

help:
	@echo "make venv             create .venv and install requirements-dev.txt (when they change)"
	@echo "make infra-venv       create .venv-infra with checkov (requirements-infra.txt) for tests/test_bicep.py"
	@echo "make node             npm ci (Azurite) when node_modules is missing or stale"
	@echo "make console          npm ci + build the admin console into console/dist (served under /console/)"
	@echo "make run [PORT=7071]  start services (profile run), migrate, run devhost; Ctrl-C stops all"
	@echo "make test [PYTEST_ARGS=-q]  start services (profile test), run pytest, stop services"
	@echo "make services [PROFILE=run|test]   start services only;  . .local/<profile>/services.sh"
	@echo "make services-down [PROFILE=...]   stop them (data is kept)"
	@echo "make services-status [PROFILE=...]"
	@echo "make services-destroy [PROFILE=...]  stop them and delete their data"
	@echo "make lint             ruff check + mypy"
	@echo "make validation       run the requirement-marked tests (profile test), write docs/validation/ (HTML + JSON)"
	@echo "make audit            pip-audit + npm audit of the pinned dependencies (skipped without network)"

# ---------------------------------------------------------------- dependencies

venv: $(VENV_STAMP)

# Locked so that `make run` and `make test` started together on a new machine don't both
# pip-install into the same venv.
$(VENV_STAMP): requirements.txt requirements-dev.txt
	@mkdir -p $(LOCAL)
	exec 9>$(LOCAL)/.venv.lock
	if command -v flock >/dev/null; then flock 9; fi
	if [ -f $@ ] && [ $@ -nt requirements.txt ] && [ $@ -nt requirements-dev.txt ]; then exit 0; fi
	echo "installing requirements-dev.txt into $(VENV)"
	bash scripts/system_deps.sh
	[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

infra-venv: $(INFRA_STAMP)

$(INFRA_STAMP): requirements-infra.txt
	@mkdir -p $(LOCAL)
	exec 9>$(LOCAL)/.venv-infra.lock
	if command -v flock >/dev/null; then flock 9; fi
	if [ -f $@ ] && [ $@ -nt requirements-infra.txt ]; then exit 0; fi
	echo "installing requirements-infra.txt into $(INFRA_VENV)"
	[ -x $(INFRA_VENV)/bin/python ] || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements-infra.txt
	touch $@

# npm ci when node_modules is missing or older than package-lock.json (devservices.py
# checks that and takes a lock, for the same reason as above).
node:
	@$(DEVSERVICES) node

# The admin console (console/, its own package.json: Vite + TypeScript). console/dist is built,
# never committed; npm ci only when console/node_modules is missing or older than the lock.
CONSOLE_STAMP := console/node_modules/.package-lock.json

console: $(CONSOLE_STAMP)
	@npm --prefix console run build --silent >/dev/null
	echo "console built into console/dist"

$(CONSOLE_STAMP): console/package-lock.json
	@mkdir -p $(LOCAL)
	exec 9>$(LOCAL)/.console-npm.lock
	if command -v flock >/dev/null; then flock 9; fi
	if [ -f $@ ] && [ $@ -nt console/package-lock.json ]; then exit 0; fi
	npm --prefix console ci --no-audit --no-fund
	touch $@

# ---------------------------------------------------------------- run / test

# One shell (.ONESHELL): the EXIT trap stops the services this recipe started (by PID,
# through devservices.py down) after devhost ends, including on Ctrl-C.  Data is kept, so
# the next `make run` finds it again.
run: venv node console
	@trap 'rc=$$?; trap - EXIT; $(DEVSERVICES) down --profile run || true; exit $$rc' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	$(DEVSERVICES) up --profile run >/dev/null
	. $(LOCAL)/run/services.sh
	# Like `func start`, devhost and the CLI read local.settings.json; the services' own
	# settings (database, storage) come from services.sh and win over the file.
	[ -f local.settings.json ] || cp local.settings.sample.json local.settings.json
	echo "+ $(VPY) -m shared.cli migrate"
	$(VPY) -m shared.cli migrate
	echo "+ $(VPY) -m devhost --port $(PORT) --banner"
	$(VPY) -m devhost --port $(PORT) --banner

# The tests start devhost themselves.  Services are always stopped afterwards; the exit
# status is pytest's.
test: venv infra-venv node console
	@echo "+ ruff check . && mypy (types are checked like tests)"
	$(VPY) -m ruff check .
	$(VPY) -m mypy
	trap 'rc=$$?; trap - EXIT; $(DEVSERVICES) down --profile test || true; exit $$rc' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	$(DEVSERVICES) up --profile test >/dev/null
	. $(LOCAL)/test/services.sh
	echo "+ $(VPY) -m pytest $(PYTEST_ARGS)"
	$(VPY) -m pytest $(PYTEST_ARGS)

# ---------------------------------------------------------------- services only

services: node
	@$(DEVSERVICES) up --profile $(PROFILE) >/dev/null
	echo "services of profile $(PROFILE) are up; load their settings with:  . $(LOCAL)/$(PROFILE)/services.sh"

services-down:
	@$(DEVSERVICES) down --profile $(PROFILE)

services-status:
	@$(DEVSERVICES) status --profile $(PROFILE)

# Stop, then delete the profile's database, blobs and generated passwords (e.g. after
# migrations were edited: `make services-destroy PROFILE=test`).
services-destroy:
	@$(DEVSERVICES) destroy --profile $(PROFILE)

# ---------------------------------------------------------------- checks

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m mypy

# ---------------------------------------------------------------- validation report

# The tests marked @pytest.mark.requirement(...) (VALIDATION_ARGS=--all: the whole suite) on the
# test profile's services, then docs/validation/report.json and index.html. Exit 2 when a Part 11
# clause has no passing test; the report is written either way.
VALIDATION_ARGS ?=
validation: venv infra-venv node console
	@trap 'rc=$$?; trap - EXIT; $(DEVSERVICES) down --profile test || true; exit $$rc' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	$(DEVSERVICES) up --profile test >/dev/null
	. $(LOCAL)/test/services.sh
	echo "+ $(VPY) -m shared.cli validation-report $(VALIDATION_ARGS)"
	$(VPY) -m shared.cli validation-report $(VALIDATION_ARGS)

# Known vulnerabilities in the pinned dependencies. Needs the advisory databases: without them it
# prints "skipped: no network" and succeeds, so it is not part of `make test` (which runs bandit and
# the secret scan offline, in tests/test_supply_chain.py). CI runs it with --require-network.
audit: venv
	tools/audit_deps.sh
