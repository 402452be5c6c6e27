"""`make patch-check`: JAX's own tests on the pristine and the patched tree.

    python build/check_patch.py --python VENV/bin/python [--target main]

Run after build/make_patch.py, with the interpreter of a venv whose jaxlib
runs the target's source (main: the newest jaxlib release). From each tree's
root (JAX's pytest configuration applies: its pyproject.toml turns warnings
into errors), with `jax_remat_refs` made unimportable:

  * the seed program on both trees (patched: grad 1.0, ref 2.0);
  * SUITES on both trees: a failure on the patched tree that the pristine
    tree also has is JAX's own, not a new one;
  * per patch, the tests it adds: on the tree with the patches before it and
    its own tests only (its jax/ part left out: they must fail, or the test
    does not test the change) and with the patch (they must pass).

Writes build/out/patches/<target>/check.json and table.md (the per-patch
table). Paths in both are relative to the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
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


def _env(tree: pathlib.Path) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(tree)
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def run_pytest(python, tree, targets, timeout, k=None) -> dict:
  t0 = time.time()
  cmd = [python, "-c", "import sys, pytest; sys.modules['jax_remat_refs'] = "
         "None; sys.exit(pytest.main(sys.argv[1:]))", "-q", "-p",
         "no:cacheprovider", *targets, *(["-k", k] if k else [])]
  try:
    r = subprocess.run(cmd, cwd=tree, env=_env(tree), text=True,
                       capture_output=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(summary="timed out", seconds=round(time.time() - t0),
                failed=[])
  out = r.stdout + r.stderr
  failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)))
  lines = [l for l in out.strip().splitlines() if re.search(
      r"\d+ (passed|failed|skipped|deselected|error)", l)]
  summary = lines[-1].strip("= ") if lines else out.strip()[-300:]
  return dict(summary=summary, seconds=round(time.time() - t0),
              failed=failed, returncode=r.returncode)


def seed(python, tree) -> str:
  r = subprocess.run([python, "-c", SEED, str(tree)], cwd=tree,
                     env=_env(tree), text=True, capture_output=True)
  return r.stdout.strip() if r.returncode == 0 else f"error: {r.stderr[-300:]}"


def own_tests(python, target_dir, meta, timeout) -> list[dict]:
  """Per patch: its added tests without and with its jax/ part."""
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    tree = pathlib.Path(tmp) / "tree"
    shutil.copytree(target_dir / "pristine", tree, symlinks=True)
    for p in meta["series"]:
      patch = target_dir / p["patch"]
      row = dict(patch=p["patch"])
      if p["tests"]:
        files = sorted(p["tests"])
        k = " or ".join(n for f in files for n in p["tests"][f])
        make_patch.apply(tree, patch, "--include=tests/*")
        row["without_fix"] = run_pytest(python, tree, files, timeout, k)
        make_patch.apply(tree, patch, "--exclude=tests/*")
        row["with_fix"] = run_pytest(python, tree, files, timeout, k)
      else:
        make_patch.apply(tree, patch)
      out.append(row)
      print(f"{p['patch']}: own tests without the fix: "
            f"{row.get('without_fix', {}).get('summary')}; with it: "
            f"{row.get('with_fix', {}).get('summary')}", flush=True)
  return out


def table(meta, check) -> str:
  rows = ["| patch | jax/ lines | tests/ lines | applies | its tests without "
          "/ with the fix |", "|---|---|---|---|---|"]
  own = {r["patch"]: r for r in check.get("own_tests", [])}
  for p in meta["series"]:
    o = own.get(p["patch"], {})
    rows.append(
        f"| {p['patch']} | +{p['jax_added']}/-{p['jax_removed']} | "
        f"+{p['tests_added']}/-{p['tests_removed']} | "
        f"{'yes' if p['applies'] else 'no'} | "
        f"{o.get('without_fix', {}).get('summary', '-')} / "
        f"{o.get('with_fix', {}).get('summary', '-')} |")
  rows += ["", "| JAX suite | pristine | patched | new failures |",
           "|---|---|---|---|"]
  for name, r in check["suites"].items():
    b = check["baseline"].get(name, {})
    rows.append(f"| {name} | {b.get('summary', '-')} | {r['summary']} | "
                f"{len(r['new_failures'])} |")
  rows += ["", f"Seed program (grad, final ref): pristine "
           f"{check.get('seed_pristine')}, patched {check['seed_patched']}."]
  return "\n".join(rows) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--target", default="main")
  ap.add_argument("--python", required=True,
                  help="interpreter of a venv with a jaxlib for the target")
  ap.add_argument("--out", default=str(make_patch.OUT / "patches"))
  ap.add_argument("--suites", default=",".join(SUITES))
  ap.add_argument("--timeout", type=int, default=3600)
  ap.add_argument("--no-own-tests", action="store_true")
  ap.add_argument("--reuse-baseline", action="store_true",
                  help="take the pristine tree's results from the last "
                  "check.json of the same source")
  ns = ap.parse_args(argv)
  target_dir = pathlib.Path(ns.out) / ns.target
  meta = json.loads((target_dir / "series.json").read_text())
  pristine, patched = target_dir / "pristine", target_dir / "tree"
  check = dict(target=ns.target, source=meta["source"], suites={},
               baseline={})
  last = target_dir / "check.json"
  old = json.loads(last.read_text()) if last.exists() else {}
  reuse = ns.reuse_baseline and old.get("source") == meta["source"]
  check["seed_patched"] = seed(ns.python, patched)
  check["seed_pristine"] = (old["seed_pristine"] if reuse else
                            seed(ns.python, pristine))
  print(f"seed: pristine {check['seed_pristine']}, patched "
        f"{check['seed_patched']}", flush=True)
  if not ns.no_own_tests:
    check["own_tests"] = own_tests(ns.python, target_dir, meta, ns.timeout)
  for name in filter(None, ns.suites.split(",")):
    b = (old["baseline"][name] if reuse and name in old["baseline"] else
         run_pytest(ns.python, pristine, SUITES[name], ns.timeout))
    r = run_pytest(ns.python, patched, SUITES[name], ns.timeout)
    r["new_failures"] = [t for t in r["failed"] if t not in b["failed"]]
    check["baseline"][name], check["suites"][name] = b, r
    print(f"{name}: pristine {b['summary']} ({b['seconds']} s); patched "
          f"{r['summary']} ({r['seconds']} s)"
          + (f"; NEW FAILURES: {r['new_failures']}" if r["new_failures"]
             else ""), flush=True)
  (target_dir / "check.json").write_text(json.dumps(check, indent=1) + "\n")
  (target_dir / "table.md").write_text(table(meta, check))
  print(table(meta, check))
  bad = any(r["new_failures"] or r["summary"] == "timed out"
            for r in check["suites"].values())
  bad |= any("failed" not in r.get("without_fix", {}).get("summary", "failed")
             or "failed" in r.get("with_fix", {}).get("summary", "")
             for r in check.get("own_tests", []))
  return 1 if bad or not check["seed_patched"].startswith("1.0 2.0") else 0


if __name__ == "__main__":
  sys.exit(main())
