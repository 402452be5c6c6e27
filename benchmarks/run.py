"""`make bench`: cost of refs + jax.remat against the pure-functional program.

For each workload (benchmarks/workloads.py), the same values and gradients
are computed by
  A  refs + jax.remat with jax_remat_refs,
  B  the pure-functional rewrite (state threaded through args/outputs) + remat,
  C  refs without remat,
  U  refs + jax.remat on upstream JAX (package deactivated; wrong where refs
     are written, but its cost is what refs cost in JAX itself; run with
     jax_mutable_array_checks off, without which upstream's remat does not
     compile with ref arguments under jit).
Refs are made outside jit and passed in, as a user keeps state.
Reported per program (benchmarks/measure.py, benchmarks/report.py): XLA
temp bytes of the compiled step, residual bytes (`saved_residuals`), median
step time (A, B, C and U timed interleaved, 60 steps each), trace+compile
time (best of 5, JAX's caches cleared); then the ratios A/B, A/C and A/U,
U/B for step and compile time (what refs cost in JAX itself) and A-B compile
milliseconds. Results also go to benchmarks/results/bench-jax<version>.json.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import measure
import report
from workloads import Sizes, workload_list


def _flags(ns, sizes):
  """The flags that give a child process (--isolate) these sizes."""
  return ["--width", str(sizes.width), "--batch", str(sizes.batch),
          "--dtype", np.dtype(sizes.dtype).name, "--reps", str(ns.reps),
          "--Ls", ",".join(map(str, ns.Ls)), "--compiles", str(ns.compiles)]


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--reps", type=int, default=60)
  p.add_argument("--quick", action="store_true", help="L=8 only")
  p.add_argument("--Ls", default="8,32,128", help="layer counts, e.g. 32,128")
  p.add_argument("--width", type=int, default=Sizes.width)
  p.add_argument("--batch", type=int, default=Sizes.batch)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--compiles", type=int, default=5,
                 help="trace+compile time: the best of this many")
  p.add_argument("--only", help="run only the workloads whose name contains "
                 "one of these (comma-separated)")
  p.add_argument("--isolate", action="store_true",
                 help="each variant in its own process (peak device memory)")
  p.add_argument("--no-scaling", action="store_true",
                 help="skip the trace-time scaling table")
  p.add_argument("--json", help="where to write the results "
                 "(default benchmarks/results/bench-jax<version>.json)")
  p.add_argument("--variant", help=argparse.SUPPRESS)
  ns = p.parse_args(argv)
  ns.Ls = (8,) if ns.quick else tuple(int(x) for x in ns.Ls.split(","))
  sizes = Sizes(ns.width, ns.batch, jnp.dtype(ns.dtype))
  if ns.variant:  # a child of --isolate: --only is one workload's name
    (build,) = [b for n, b in workload_list(ns.Ls, sizes) if n == ns.only]
    return measure.one_variant(build, ns.variant, ns.reps, ns.compiles)
  only = ns.only.split(",") if ns.only else None
  workloads = [w for w in workload_list(ns.Ls, sizes)
               if not only or any(o in w[0] for o in only)]
  print(report.preamble(sizes))
  print(report.HEADER)
  results = {}
  for name, build in workloads:
    rows = (measure.run_isolated(name, __file__, _flags(ns, sizes))
            if ns.isolate else
            measure.run_workload(name, build, ns.reps, ns.compiles))
    r = report.ratios(rows)
    results[name] = dict(rows=rows, ratios=r)
    print(report.row_line(name, r), flush=True)
  scaling = {}
  if not ns.no_scaling:
    print()
    print(report.SCALING_HEADER)
    for n in (100, 400, 1600):
      a_ms, b_ms, eqns = measure.trace_scaling(n)
      scaling[n] = dict(A_ms=a_ms, B_ms=b_ms, body_eqns=eqns)
      print(report.scaling_line(a_ms, b_ms, eqns), flush=True)
  out = ns.json or f"benchmarks/results/bench-jax{jax.__version__}.json"
  report.write_json(out, sizes, results, scaling)
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
