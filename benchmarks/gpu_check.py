"""`make gpu-check`: the whole device check as one prepared command.

On a machine with an accelerator (default): the seed program, the test suite
(modules that need the CPU's 8 host devices skip themselves with a reason on
a single GPU; the fuzz shards are left out there, see PLANS), and `benchmarks/run.py` at sizes that mean something there
(width 2048, batch 128, L = 32/128; float32 with each variant in its own
process so that the device's peak memory is its own, then bfloat16). With
``--backend cpu`` the same steps in a quick form (small sizes, a test
subset), which CI runs so that the command never rots.

Writes into ``--out`` (default build/out): ``gpu_check.json`` (backend, JAX
version, device, the seed program's result, ``tests: {passed, failed,
skipped}``, ``bench``: one row per workload and dtype) and ``gpu_check.log``
(everything the steps printed). Exits non-zero when a step fails.

Tests run with ``JAX_DEFAULT_MATMUL_PRECISION=highest``: on GPUs float32
matmuls default to TF32, and the suite compares remat against no-remat
programs at float32 tolerances.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per backend: the test selection, the benchmark sizes and the time limits.
PLANS = {
    # The fuzz shards are left out on the device: they are compile-bound and
    # backend-independent (CI runs them), and the whole check must fit in
    # the device machine's 10 minutes a command.
    "gpu": dict(
        tests=["tests", "--ignore=tests/test_fuzz.py"], test_timeout=270,
        # float32 with each variant in its own process (peak memory); then
        # bfloat16 in one process (temp bytes and times only), to fit.
        bench=[dict(dtype="float32", timeout=170, args=[
                   "--width", "2048", "--batch", "128", "--Ls", "32,128",
                   "--reps", "20", "--compiles", "1", "--isolate",
                   "--no-scaling", "--only", "stats,stacked w_ref,cache"]),
               dict(dtype="bfloat16", timeout=80, args=[
                   "--width", "2048", "--batch", "128", "--Ls", "32,128",
                   "--reps", "20", "--compiles", "1", "--no-scaling",
                   "--only", "stats,stacked w_ref,cache"])],
    ),
    "cpu": dict(
        tests=["tests/test_smoke.py", "tests/test_issue_programs.py"],
        test_timeout=600,
        bench=[dict(dtype=d, timeout=600, args=[
                   "--width", "32", "--batch", "4", "--Ls", "4", "--reps", "3",
                   "--compiles", "1", "--only", "stacked", "--no-scaling"]
                   + (["--isolate"] if d == "float32" else []))
               for d in ("float32", "bfloat16")]),
}


def _run(cmd, log, timeout, env=None):
  """Runs `cmd` from the repository root, appending its output to `log`;
  returns (exit code, output). A timeout is exit code 124."""
  t0 = time.time()
  log.write(f"\n$ {' '.join(cmd)}\n")
  log.flush()
  try:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    rc, out = p.returncode, p.stdout + p.stderr
  except subprocess.TimeoutExpired as e:
    rc = 124
    out = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
           else (e.stdout or "")) + f"\n(timed out after {timeout} s)"
  log.write(out)
  log.write(f"\n(exit {rc}, {time.time() - t0:.0f} s)\n")
  log.flush()
  return rc, out


def _test_counts(junit_path):
  """{passed, failed, skipped} from a pytest junit file ({} if none)."""
  if not os.path.exists(junit_path):
    return {}
  root = ET.parse(junit_path).getroot()
  suites = [root] if root.tag == "testsuite" else list(root)
  n = lambda k: sum(int(s.get(k, 0)) for s in suites)
  failed = n("failures") + n("errors")
  skipped = n("skipped")
  return dict(passed=n("tests") - failed - skipped, failed=failed,
              skipped=skipped)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--backend", default="gpu", choices=sorted(PLANS))
  ap.add_argument("--out", default=os.path.join(ROOT, "build", "out"))
  ns = ap.parse_args(argv)
  plan = PLANS[ns.backend]
  os.makedirs(ns.out, exist_ok=True)
  env = {"JAX_PLATFORMS": "cpu"} if ns.backend == "cpu" else {}
  py = sys.executable
  report = dict(backend=ns.backend, date=time.strftime("%Y-%m-%d %H:%M:%S"))
  ok = True
  with open(os.path.join(ns.out, "gpu_check.log"), "w") as log:
    rc, out = _run([py, "-c", "import jax, json; d = jax.devices()[0]; "
                    "print(json.dumps(dict(jax=jax.__version__, "
                    "platform=d.platform, device=d.device_kind, "
                    "devices=len(jax.devices()))))"], log, 120, env)
    info = [l for l in out.splitlines() if l.startswith("{")]
    report.update(json.loads(info[-1]) if info else dict(error=out[-300:]))
    ok &= rc == 0

    rc, out = _run([py, "examples/demo.py", "--seed-only"], log, 120, env)
    m = re.search(r"grad ([-\d.]+), ref ([-\d.]+)", out)
    report["seed_program"] = dict(
        grad=float(m[1]) if m else None, ref=float(m[2]) if m else None,
        ok=rc == 0)
    ok &= rc == 0

    junit = os.path.join(ns.out, "junit.xml")
    if os.path.exists(junit):
      os.remove(junit)
    rc, out = _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", *plan["tests"]], log,
                   plan["test_timeout"],
                   {**env, "JAX_DEFAULT_MATMUL_PRECISION": "highest"})
    report["tests"] = _test_counts(junit)
    report["tests_exit"] = rc
    ok &= rc == 0 and bool(report["tests"])

    report["bench"] = []
    for b in plan["bench"]:
      path = os.path.join(ns.out, f"bench-{b['dtype']}.json")
      rc, out = _run([py, "benchmarks/run.py", "--dtype", b["dtype"],
                      "--json", path, *b["args"]], log, b["timeout"],
                     env)
      ok &= rc == 0
      if rc == 0:
        with open(path) as f:
          res = json.load(f)
        for name, r in res["results"].items():
          report["bench"].append(dict(workload=name, dtype=b["dtype"],
                                      width=res["width"], batch=res["batch"],
                                      **r["ratios"],
                                      rows={k: {f: v for f, v in row.items()
                                                if f != "error"}
                                            for k, row in r["rows"].items()}))
      else:
        report["bench"].append(dict(dtype=b["dtype"], error=out[-300:]))
  report["ok"] = bool(ok)
  with open(os.path.join(ns.out, "gpu_check.json"), "w") as f:
    json.dump(report, f, indent=1)
  t = report.get("tests", {})
  print(f"gpu-check ({ns.backend}, jax {report.get('jax')}, "
        f"{report.get('device')}): seed {report['seed_program']}, tests "
        f"{t.get('passed')} passed, {t.get('failed')} failed, "
        f"{t.get('skipped')} skipped; {len(report['bench'])} bench rows; "
        f"{'ok' if ok else 'FAILED'} -> {ns.out}/gpu_check.json")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
