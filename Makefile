# Everything runs in a virtual environment made from the chosen Python and
# pinned to the JAX it tests:
#   make test                          # first python3 on the PATH, its default JAX
#   make test PYTHON=python3.12        # or any interpreter path
#   make test JAX=0.11.1 PYTHON=...    # any supported release (0.7.2 - 0.12.0.1)
#   make test-quick JAX=0.10.0         # seed program, core tests, 50 + 50 fuzz programs
PYTHON ?= python3
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)
# The JAX each Python tests by default: the newest release installable on it.
JAX_DEFAULT := $(if $(filter 311,$(PYVER)),0.10.2,0.12.0.1)
JAX ?= $(JAX_DEFAULT)
# The Flax tested with each JAX: the newest Flax whose requirements admit it
# (flax 0.12.12 needs jax >= 0.11.1, 0.12.8 jax >= 0.10.0 and is the newest
# for Python 3.11, 0.12.6 jax >= 0.8.1; see docs/flax-compat.txt). For jax
# 0.7.2 and 0.8.0 none: the only Flax they admit (0.12.0) lacks what
# jax_remat_refs.flax needs (flax.nnx.graphlib). FLAX=none leaves Flax out
# (its tests skip).
FLAX ?= $(if $(filter 0.7.% 0.8.0,$(JAX)),none,$(if $(filter 0.8.% 0.9.%,$(JAX)),0.12.6,$(if $(filter 0.10.% 0.11.0,$(JAX)),0.12.8,0.12.12)))
# FORK=1: the venv's jax is the fork of release $(JAX) that `make fork`
# builds (the series of build/series/jax-$(JAX) applied); `make test FORK=1`
# then checks that the package installs nothing into it and runs the suite
# and 100 + 100 fuzz programs with the package not imported.
# JAX=main FORK=1: JAX's main with build/series/main/ (`make fork JAX=main`
# first; its version is <next release>.dev<date>+remat.refs) over the newest
# jaxlib.
FORK ?=
# programs per generator that `make test FORK=1` fuzzes
FORK_N ?= 100
FORK_VERSION := $(if $(filter main,$(JAX)),*.dev*,$(JAX))+remat.refs
FORK_GLOB := build/out/fork/jax-$(FORK_VERSION)-py3-none-any.whl
FORK_WHEEL := $(if $(filter main,$(JAX)),$(wildcard $(FORK_GLOB)),$(FORK_GLOB))
JAX_WANT := $(if $(FORK),$(FORK_VERSION),$(JAX))
JAX_PIN = $(if $(filter main,$(JAX)),jaxlib==$(MAIN_JAXLIB),jax==$(JAX))
VENV ?= .venv-py$(PYVER)-jax$(JAX)$(if $(FORK),-fork)
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FLAX_PIN := $(if $(filter none,$(FLAX)),,flax==$(FLAX))
N ?= 1000
GEN ?= 1
# The first fuzz seed: SEED=... when given; else 0 for `make fuzz`, and for
# `make test-quick` one taken from the commit checked out (its hash into
# [10^6, 10^9)), so each commit's quick runs (CI's on every landing) try 100
# programs no earlier commit's tried, while a rerun on the commit tries the
# same ones. A failure prints its seed and program; SEED=<printed> reruns it.
SEED ?=
COMMIT = $(shell git rev-parse -q --verify HEAD 2>/dev/null)
COMMIT_SEED = $(if $(COMMIT),$(shell $(PYTHON) -c 'print(10**6 + int("$(COMMIT)", 16) % (10**9 - 10**6))'),0)
QUICK_SEED = $(or $(SEED),$(COMMIT_SEED))
# `make test-quick` (CI's run for each release but the newest of its minor
# line): the seed program, these tests (test_compat: the import gate, the
# probes and the fixes of JAX rules that some releases need) and 50 + 50 fuzz
# programs.
QUICK_TESTS := tests/test_smoke.py tests/test_compat.py tests/test_core.py tests/test_issue_programs.py tests/test_loop_hoisting.py tests/test_fuzz_menu.py tests/test_ref_kinds.py tests/test_aliased_refs.py

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

.PHONY: wheel venv test test-quick fuzz-seed demo fuzz bench gpu-check patch patch-check fork fork-quick jax-repo clean

$(STAMP): pyproject.toml $(if $(FORK),$(FORK_WHEEL))
	$(if $(filter main,$(JAX)),$(if $(FORK),,$(error JAX=main is JAX's main with the series: it needs FORK=1)))
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[test]' '$(JAX_PIN)' $(FLAX_PIN)
	$(if $(FORK),$(VPY) -m pip install -q --no-deps --force-reinstall $(FORK_GLOB))
	$(VPY) -c 'import fnmatch, jax, sys; v = jax.__version__; sys.exit(not fnmatch.fnmatchcase(v, "$(JAX_WANT)") and "installed jax " + v + ", wanted $(JAX_WANT)")'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
ifeq ($(FORK),)
	$(VPY) -m pytest -q tests
else
	# All three run; the target fails if any of them failed.
	rc=0; \
	$(VPY) build/fork.py suite || rc=1; \
	$(VPY) build/fork.py fuzz --gen 1 --n $(FORK_N) --seed $(or $(SEED),0) --quiet --progress 0 || rc=1; \
	$(VPY) build/fork.py fuzz --gen 2 --n $(FORK_N) --seed $(or $(SEED),0) --quiet --progress 0 || rc=1; \
	exit $$rc
endif

# Without --quiet: a failing fuzz program is printed with its source.
test-quick: $(STAMP)
	$(VPY) examples/demo.py --seed-only
	$(VPY) -m pytest -q $(QUICK_TESTS)
	@echo "fuzz seed $(QUICK_SEED) ($(if $(SEED),given,from commit $(or $(COMMIT),- none: not a git checkout)))"
	$(VPY) -m tests.fuzz.run --gen 1 --n 50 --seed $(QUICK_SEED) --progress 0
	$(VPY) -m tests.fuzz.run --gen 2 --n 50 --seed $(QUICK_SEED) --progress 0

fuzz-seed:
	@echo $(QUICK_SEED)

demo: $(STAMP)
	$(VPY) examples/demo.py

fuzz: $(STAMP)
	$(VPY) -m tests.fuzz.run --gen $(GEN) --n $(N) --seed $(or $(SEED),0)

bench: $(STAMP)
	$(VPY) benchmarks/run.py

gpu-check: $(GPU_CHECK_DEPS)
ifneq ($(BACKEND),cpu)
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e . || \
	  echo "(pip install failed: running from the source tree)"
endif
	PYTHONPATH=$(CURDIR) $(GPU_CHECK_PY) benchmarks/gpu_check.py --backend $(BACKEND) --out $(OUT)

# make patch: the hand-written series of build/series/ applied, in order, to
# JAX's main (the newest commit of JAX_REPO, a clone of
# github.com/jax-ml/jax; `make jax-repo` clones it into build/out/jax.git) and
# to each supported release's sdist: build/out/patches/<target>/.
# make patch-check: JAX's own tests on main, pristine and patched, the seed
# program and each patch's own tests (a venv with the newest jaxlib, which
# runs main). make fork JAX=<release>: the release's sdist with its series,
# as a wheel with a local version (build/out/fork/).
JAX_REPO ?= build/out/jax.git
MAIN_JAXLIB ?= 0.11.1
MAIN_VENV := build/out/venv-main-jaxlib$(MAIN_JAXLIB)
jax-repo:
	test -e $(JAX_REPO) || git clone --bare https://github.com/jax-ml/jax $(JAX_REPO)

patch:
	$(PYTHON) build/make_patch.py --repo $(JAX_REPO)

$(MAIN_VENV)/.installed:
	$(PYTHON) -m venv $(MAIN_VENV)
	$(MAIN_VENV)/bin/pip install -q 'jaxlib==$(MAIN_JAXLIB)' pytest absl-py hypothesis numpy scipy ml_dtypes opt_einsum flatbuffers cloudpickle
	touch $@

patch-check: patch $(MAIN_VENV)/.installed
	$(MAIN_VENV)/bin/python build/check_patch.py --target main --python $(CURDIR)/$(MAIN_VENV)/bin/python

fork $(FORK_WHEEL):
	$(PYTHON) build/fork.py build --jax $(JAX) --repo $(JAX_REPO)

# make fork-quick JAX=<release> FORK=1: the quick tests with their expected
# failures sorted out, and 50 + 50 fuzz programs, on the fork (CI's step).
fork-quick: $(STAMP)
	$(if $(FORK),,$(error fork-quick needs FORK=1))
	$(VPY) build/fork.py suite $(QUICK_TESTS)
	$(VPY) build/fork.py fuzz --gen 1 --n 50 --seed $(QUICK_SEED) --quiet --progress 0
	$(VPY) build/fork.py fuzz --gen 2 --n 50 --seed $(QUICK_SEED) --quiet --progress 0

# make wheel: the package built with `python -m build` into build/out/dist and
# installed from that wheel into a fresh venv, where the seed program runs
# (CI's check that `pip install <checkout>` works as the README says).
wheel: $(STAMP)
	$(VPY) -m pip install -q build
	rm -rf build/out/dist build/out/wheel-venv
	$(VPY) -m build --wheel --outdir build/out/dist .
	$(PYTHON) -m venv build/out/wheel-venv
	build/out/wheel-venv/bin/pip install -q build/out/dist/*.whl 'jax==$(JAX)'
	cd build/out && wheel-venv/bin/python -c 'import jax, jax_remat_refs; f = jax.remat(lambda y, r: (y * r[...], r.__setitem__(..., r[...] + 1))[0]); r = jax.new_ref(1.); g = jax.grad(f)(1., r); assert (float(g), float(r[...])) == (1.0, 2.0), (g, r); print("wheel ok: seed", float(g), float(r[...]))'

clean:
	rm -rf .venv-py* build/out benchmarks/results
