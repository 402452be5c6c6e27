# Everything runs in a virtual environment made from the chosen Python and
# pinned to the JAX it tests:
#   make test                          # first python3 on the PATH, its default JAX
#   make test PYTHON=python3.12        # or any interpreter path
#   make test JAX=0.11.1 PYTHON=...    # any supported release (0.10.0 - 0.12.0.1)
#   make test-quick JAX=0.10.0         # seed program, core tests, 50 + 50 fuzz programs
PYTHON ?= python3
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)
# The JAX each Python tests by default: the newest release installable on it.
JAX_DEFAULT := $(if $(filter 311,$(PYVER)),0.10.2,0.12.0.1)
JAX ?= $(JAX_DEFAULT)
# The Flax tested with each JAX (flax 0.12.12 needs jax >= 0.11.1; 0.12.8 is
# the newest for Python 3.11). FLAX=none leaves Flax out (its tests skip).
FLAX ?= $(if $(filter 0.10.% 0.11.0,$(JAX)),0.12.8,0.12.12)
VENV ?= .venv-py$(PYVER)-jax$(JAX)
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FLAX_PIN := $(if $(filter none,$(FLAX)),,flax==$(FLAX))
N ?= 1000
SEED ?= 0
GEN ?= 1
QUICK_TESTS := tests/test_smoke.py tests/test_core.py tests/test_issue_programs.py tests/test_loop_hoisting.py

# make gpu-check: on the device machine, its python3 and its JAX (the project
# is installed without dependencies); BACKEND=cpu: the quick CPU form, in
# this project's venv (CI runs it). OUT: where gpu_check.json goes.
BACKEND ?= gpu
OUT ?= build/out
ifeq ($(BACKEND),cpu)
GPU_CHECK_DEPS := $(STAMP)
GPU_CHECK_PY := $(VPY)
else
GPU_CHECK_DEPS :=
GPU_CHECK_PY := $(PYTHON)
endif

.PHONY: venv test test-quick demo fuzz bench gpu-check patch patch-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[test]' 'jax==$(JAX)' $(FLAX_PIN)
	$(VPY) -c 'import jax, sys; v = jax.__version__; sys.exit(v != "$(JAX)" and "installed jax " + v + ", wanted $(JAX)")'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

test-quick: $(STAMP)
	$(VPY) -m jax_remat_refs.demo --seed-only
	$(VPY) -m pytest -q $(QUICK_TESTS)
	$(VPY) -m tests.fuzz.run --gen 1 --n 50 --seed $(SEED) --quiet --progress 0
	$(VPY) -m tests.fuzz.run --gen 2 --n 50 --seed $(SEED) --quiet --progress 0

demo: $(STAMP)
	$(VPY) -m jax_remat_refs.demo

fuzz: $(STAMP)
	$(VPY) -m tests.fuzz.run --gen $(GEN) --n $(N) --seed $(SEED)

bench: $(STAMP)
	$(VPY) benchmarks/run.py

gpu-check: $(GPU_CHECK_DEPS)
ifneq ($(BACKEND),cpu)
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e . || \
	  echo "(pip install failed: running from the source tree)"
endif
	PYTHONPATH=$(CURDIR) $(GPU_CHECK_PY) benchmarks/gpu_check.py --backend $(BACKEND) --out $(OUT)

# make patch: the upstream series for every supported tag of a JAX git
# repository (JAX_REPO: a clone of github.com/jax-ml/jax with its tags), each
# applied in order to a fresh export of its tag. make patch-check: JAX's own
# tests and the added ones on the patched tree of tag jax-v$(JAX), against
# the pristine tag, with this venv's jaxlib.
JAX_REPO ?= /work/.mirror/jax-ml+jax/repo
patch:
	$(PYTHON) build/make_patch.py --repo $(JAX_REPO) --check

patch-check: $(STAMP)
	$(VPY) build/check_patch.py --repo $(JAX_REPO) --tag jax-v$(JAX) --python $(CURDIR)/$(VPY)

clean:
	rm -rf .venv-py* build/out benchmarks/results
