# The two commands of the README: `make demo` and `make test`. Both create .venv from the
# pinned requirements (with the test tools) when it is missing or older than either file.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEMO_DIR ?= runs/demo

.PHONY: demo test venv clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/run_demo.py --output $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest tests

clean-demo:
	rm -rf $(DEMO_DIR)
