"""Proves a tag's patch series on JAX's own tests (`make patch-check`).

    python build/check_patch.py --tag jax-v0.10.2 --python .venv-py311/bin/python

With the interpreter of a venv whose jaxlib is the tag's release: exports the
tag twice (pristine, and with the series applied by `git apply`, in order,
see build/make_patch.py --check), and in each runs, from the tree's root (so
JAX's own pytest configuration applies: its pyproject.toml turns warnings
into errors), with this repo's package made unimportable:

  * the seed program (patched: grad 1.0 / ref 2.0);
  * tests/api_test.py::RematTest, tests/mutable_array_test.py,
    tests/state_test.py and, on the patched tree, tests/remat_refs_test.py.

A failure on the patched tree that the pristine tree also has is JAX's own
(reported, not counted as new). Writes OUT/<tag>/check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build"))
import make_patch  # noqa: E402

SUITES = {
    "api_test RematTest": ["tests/api_test.py::RematTest"],
    "mutable_array_test": ["tests/mutable_array_test.py"],
    "state_test": ["tests/state_test.py"],
    "remat_refs_test (added)": [make_patch.TEST],
}

SEED = """
import sys
sys.modules['jax_remat_refs'] = None
import jax
assert jax.__file__.startswith(sys.argv[1]), jax.__file__
@jax.remat
def f(y, x_ref):
  out = y * x_ref[...]
  x_ref[...] += 1
  return out
x_ref = jax.new_ref(1.)
g = jax.grad(f)(1., x_ref)
print(float(g), float(x_ref[...]))
"""


def _env(tree: pathlib.Path, blocker: pathlib.Path) -> dict:
  env = dict(os.environ)
  # The tree's jax first; a `jax_remat_refs` that refuses to import next.
  env["PYTHONPATH"] = f"{tree}{os.pathsep}{blocker}"
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def run_suite(python, tree, blocker, targets, timeout) -> dict:
  t0 = time.time()
  cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
  try:
    r = subprocess.run(cmd, cwd=tree, env=_env(tree, blocker), text=True,
                       capture_output=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(summary="timed out", seconds=round(time.time() - t0), failed=[])
  out = r.stdout + r.stderr
  failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)))
  summary = out.strip().splitlines()[-1] if out.strip() else ""
  return dict(summary=summary, seconds=round(time.time() - t0), failed=failed,
              returncode=r.returncode)


def seed(python, tree, blocker) -> str:
  r = subprocess.run([python, "-c", SEED, str(tree)], cwd=tree,
                     env=_env(tree, blocker), text=True, capture_output=True)
  return r.stdout.strip() if r.returncode == 0 else f"error: {r.stderr[-500:]}"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tag", required=True)
  ap.add_argument("--python", required=True,
                  help="interpreter of a venv with the tag's jaxlib")
  ap.add_argument("--repo", default=str(make_patch.DEFAULT_JAX_REPO))
  ap.add_argument("--out", default=str(REPO / "build" / "out" / "patches"))
  ap.add_argument("--suites", default=",".join(SUITES))
  ap.add_argument("--timeout", type=int, default=1800)
  ap.add_argument("--no-baseline", action="store_true",
                  help="skip the pristine tree's run")
  ns = ap.parse_args(argv)
  out = pathlib.Path(ns.out)
  jax_repo = pathlib.Path(ns.repo)
  make_patch.build(jax_repo, ns.tag, out)
  make_patch.check_apply(jax_repo, ns.tag, out)
  patched = out / ns.tag / "tree"
  results = dict(tag=ns.tag, python=ns.python, suites={}, baseline={})
  with tempfile.TemporaryDirectory() as tmp:
    blocker = pathlib.Path(tmp) / "block"
    (blocker / "jax_remat_refs").mkdir(parents=True)
    (blocker / "jax_remat_refs" / "__init__.py").write_text(
        "raise ImportError('jax_remat_refs is blocked: testing the patched JAX')\n")
    pristine = pathlib.Path(tmp) / "pristine"
    if not ns.no_baseline:
      make_patch.export(jax_repo, ns.tag, pristine)
    results["seed_patched"] = seed(ns.python, patched, blocker)
    if not ns.no_baseline:
      results["seed_pristine"] = seed(ns.python, pristine, blocker)
    for name in ns.suites.split(","):
      targets = SUITES[name]
      r = run_suite(ns.python, patched, blocker, targets, ns.timeout)
      b = None
      if not ns.no_baseline and make_patch.TEST not in targets:
        b = run_suite(ns.python, pristine, blocker, targets, ns.timeout)
        results["baseline"][name] = b
      new = [t for t in r["failed"] if b is None or t not in b["failed"]]
      r["new_failures"] = new
      results["suites"][name] = r
      print(f"{ns.tag} {name}: {r['summary']} ({r['seconds']} s)"
            + (f"; pristine: {b['summary']}" if b else "")
            + (f"; NEW FAILURES: {new}" if new else ""), flush=True)
  print(f"{ns.tag} seed: patched {results['seed_patched']}, pristine "
        f"{results.get('seed_pristine')}")
  (out / ns.tag / "check.json").write_text(json.dumps(results, indent=1) + "\n")
  import pr_description
  pr_description.write_all(out / ns.tag, json.loads(
      (out / ns.tag / "series.json").read_text()))
  bad = any(r["new_failures"] or r["summary"] == "timed out"
            for r in results["suites"].values())
  return 1 if bad or not results["seed_patched"].startswith("1.0 2.0") else 0


if __name__ == "__main__":
  sys.exit(main())
