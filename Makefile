# The two commands a new user needs: `make demo`, then `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test weights clean

demo: $(INSTALLED) weights
	$(BIN)/tlp run --local --demo

# The pytest script, not `python -m pytest`: that would put the repo root, and with it the
# docker/ folder, on sys.path ahead of the `docker` package that kfp.local imports.
test: $(INSTALLED)
	$(BIN)/pytest -q

# Derives the offline ImageNet MobileNetV2 weights the demo uses (cached, checksummed).
weights: $(INSTALLED)
	$(BIN)/tlp demo-weights

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) runs
