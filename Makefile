# Everything runs in a virtual environment made from the chosen Python:
#   make test                      # the Python found first (python3)
#   make test PYTHON=python3.12    # or any interpreter path
PYTHON ?= python3
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)
VENV ?= .venv-py$(PYVER)
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extras installed into the venv; CI and `make test` include Flax (its interop
# tests skip cleanly when it is absent, e.g. EXTRAS=test).
EXTRAS ?= test,flax
N ?= 1000
SEED ?= 0

.PHONY: venv test demo fuzz bench patch clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

demo: $(STAMP)
	$(VPY) -m jax_remat_refs.demo

fuzz: $(STAMP)
	$(VPY) -m tests.fuzz.run --n $(N) --seed $(SEED)

bench: $(STAMP)
	$(VPY) benchmarks/run.py

patch: $(STAMP)
	$(VPY) build/make_patch.py

clean:
	rm -rf .venv-py* build/out benchmarks/results
