# The two commands a newcomer needs:  `make demo`  and  `make test`.  Both do their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STACK := $(PY) include/scripts/stack.py
# Two stacks per checkout (plugins/tfdeploy/settings.py): the developer's (`make up`, `make demo`) and the
# test suite's own (`make test`: state in .state-test/, every port + 10000), so tests never touch yours.
DEV := TFDEPLOY_STACK=dev
TEST := TFDEPLOY_STACK=test
PYTEST_ARGS ?=
# `make test` ends with the compose smoke test (tests/compose: about 4 min on warm images); TEST_COMPOSE=0 skips it
TEST_COMPOSE ?= 1

.PHONY: help setup up down status test-status demo test test-unit test-integration lint images serving-image diagnose \
	compose-up compose-down compose-demo compose-status test-compose

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup:  ## install everything (Debian packages, venv, Hadoop jars, Docker engine, images); fast when done
	@./include/scripts/setup.sh

up: setup  ## start HDFS, the Docker engine, PostgreSQL, Redis, the router, Prometheus, Alertmanager and Airflow (CeleryExecutor, two workers) on 127.0.0.1 (your stack), waiting until each is ready
	@$(DEV) $(STACK) up

down:  ## stop every service this checkout started (your stack and the test stack), by PID
	@py=$(PY); [ -x $$py ] || py=python3; \
	 $(DEV) $$py include/scripts/stack.py down; dev=$$?; \
	 $(TEST) $$py include/scripts/stack.py down; test=$$?; \
	 exit $$(( dev || test ))

status:  ## show each service's health and PIDs (your stack)
	@$(DEV) $(STACK) status

test-status:  ## the same for the test stack that `make test` started
	@$(TEST) $(STACK) status

demo: up  ## bring the stack up and run the main job end to end, then print where to look
	@$(DEV) $(PY) include/scripts/demo.py

diagnose:  ## collect a diagnosis bundle of MODEL=<name> (REASON=...) onto HDFS through the model_diagnose DAG (your stack)
	@$(DEV) $(PY) include/scripts/diagnose.py --model "$(MODEL)" --reason "$(REASON)"

test: setup  ## start the test stack (its own state and ports) and run the whole test suite against it, then the compose smoke test (TEST_COMPOSE=0 skips it)
	@$(TEST) $(STACK) up
	@$(TEST) $(PY) -m pytest $(PYTEST_ARGS)
	@if [ "$(TEST_COMPOSE)" != 0 ]; then $(PY) -m pytest tests/compose; else echo "[test] compose smoke test skipped (TEST_COMPOSE=0)"; fi

test-integration: setup  ## only the tests against the real (test) stack
	@$(TEST) $(STACK) up
	@$(TEST) $(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-unit: setup  ## fast tests, no services
	@$(TEST) $(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint:  ## ruff, mypy and the import contracts (import-linter)
	@$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy && PYTHONPATH=plugins:include .venv/bin/lint-imports

images: setup  ## (re)build the locally built Docker images
	@./include/scripts/build_images.sh

serving-image: setup  ## build the TF-Serving-compatible image as local/tfserving-compat:latest
	@./include/scripts/build_images.sh

# The whole stack on docker-compose (docker-compose.yml, README "Topology: docker-compose"): its own project
# (tfdeploy-compose), state (.state-compose/: the env file of secrets) and ports (28080...), beside your stack.
COMPOSE := $(PY) include/scripts/compose_stack.py

compose-up: setup  ## build the compose stack's images (as needed), start it (docker-compose up -d), wait until healthy, print where to look
	@$(COMPOSE) up

compose-down:  ## stop and remove the compose stack's containers (its volumes stay; `compose_stack.py down --volumes` removes them)
	@py=$(PY); [ -x $$py ] || py=python3; $$py include/scripts/compose_stack.py down

compose-status:  ## each compose service's health
	@$(COMPOSE) status

compose-demo: compose-up  ## deploy the example model (two versions) through the compose stack's REST API, print where to look
	@$(COMPOSE) demo

test-compose: setup  ## the compose smoke test (its own project and ports): bring up, deploy, promote, tear down
	@$(PY) -m pytest tests/compose $(PYTEST_ARGS)
