# The two commands a newcomer needs:  `make demo`  and  `make test`.  Both do their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STACK := $(PY) include/scripts/stack.py
PYTEST_ARGS ?=

.PHONY: help setup up down status demo test test-unit test-integration lint images serving-image

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup:  ## install everything (Debian packages, venv, Hadoop jars, Docker engine, images); fast when done
	@./include/scripts/setup.sh

up: setup  ## start HDFS, the Docker engine and Airflow on 127.0.0.1, waiting until each is ready
	@$(STACK) up

down:  ## stop every service this project started, by PID
	@if [ -x $(PY) ]; then $(STACK) down; else python3 include/scripts/stack.py down; fi

status:  ## show each service's health and PIDs
	@$(STACK) status

demo: up  ## bring the stack up and run the main job end to end, then print where to look
	@$(PY) include/scripts/demo.py

test: up  ## run the whole test suite against the real stack
	@$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup  ## fast tests, no services
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint:  ## ruff and mypy
	@$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

images: setup  ## (re)build the locally built Docker images
	@./include/scripts/build_images.sh

serving-image: setup  ## build the TF-Serving-compatible image as local/tfserving-compat:latest
	@./include/scripts/build_images.sh
