# mmstvit: the two commands of the README, and their parts.
#   make demo   install what is missing, then train and evaluate on the embedded toy data
#   make test   install what is missing, then run the linter (make lint) and the tests
#   make lint   ruff over mmstvit/, tools/ and tests/ (rules and excludes: pyproject.toml)
#   make demo DEMO_ARGS="--num-train 8 --num-val 8"   (tools/demo.py --help)
PYTHON ?= python3
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test lint clean-demo

install:
	PYTHON=$(PYTHON) bash tools/install.sh

demo: install
	$(PYTHON) tools/demo.py $(DEMO_ARGS)

test: lint
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

lint: install
	$(PYTHON) -m ruff check mmstvit tools tests

clean-demo:
	rm -rf work_dirs/demo
