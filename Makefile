# mmstvit: the two commands of the README, and their parts (`make help`).
#   make demo   install what is missing, then train and evaluate on the embedded toy data
#   make test   install what is missing, then run the linter (make lint) and the tests
#   make lint   ruff over mmstvit/, tools/ and tests/ (rules and excludes: pyproject.toml)
#   make demo DEMO_ARGS="--num-train 8 --num-val 8"   (tools/demo.py --help)
#   STACK=upstream (default) | onedl | all: which OpenMMLab stack (docs/installation.md,
#   "Stacks"); all = upstream in $(PYTHON), then onedl in the venv $(ONEDL_VENV)
PYTHON ?= python3
STACK ?= upstream
ONEDL_VENV ?= .venv-onedl
PYTEST_ARGS ?=
DEMO_ARGS ?=

# "stack:interpreter" pairs that a target runs over
ifeq ($(STACK),all)
RUNS := upstream:$(PYTHON) onedl:$(ONEDL_VENV)/bin/python
else ifneq ($(filter $(STACK),upstream onedl),)
RUNS := $(STACK):$(PYTHON)
else
$(error STACK=$(STACK): upstream, onedl or all (make help))
endif
each = rc=0; for run in $(RUNS); do stack=$${run%%:*}; py=$${run\#*:}; \
	echo "[make] $(1) on the $$stack stack ($$py)"; $(2) || rc=1; done; exit $$rc

.PHONY: help install demo test lint clean-demo

help:
	@sed -n '2,7p' Makefile | sed 's/^# \{0,1\}//'
	@echo 'variables: PYTHON=$(PYTHON) STACK=$(STACK) ONEDL_VENV=$(ONEDL_VENV)'
	@echo 'installer: bash tools/install.sh --help'

install:
ifeq ($(STACK),all)
	test -x $(ONEDL_VENV)/bin/python || $(PYTHON) -m venv $(ONEDL_VENV)
endif
	@for run in $(RUNS); do PYTHON=$${run#*:} bash tools/install.sh \
		--stack $${run%%:*} || exit $$?; done

demo: install
	@$(call each,demo,$$py tools/demo.py $(DEMO_ARGS))

test: lint
	@$(call each,tests,$$py -m pytest tests $(PYTEST_ARGS))

lint: install
	$(PYTHON) -m ruff check mmstvit tools tests

clean-demo:
	rm -rf work_dirs/demo
