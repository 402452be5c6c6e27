"""Timing and memory of the four variants of a workload:
  A  refs + jax.remat with jax_remat_refs,
  B  the pure-functional rewrite + remat,
  C  refs without remat,
  U  refs + jax.remat on upstream JAX (package deactivated; run with
     jax_mutable_array_checks off, without which upstream's remat does not
     compile with ref arguments under jit).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import ad_checkpoint  # saved_residuals is not public
from jax._src import config

import jax_remat_refs

from workloads import scaling_bodies

VARIANTS = "ABCU"


def _nbytes(aval):
  if not hasattr(aval, "dtype") or hasattr(aval, "inner_aval"):
    return 0  # a ref passed by reference (read-only): no bytes saved
  return int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize


def _peak_bytes():
  """The device's peak so far; None where the backend keeps no statistics."""
  return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def prepare(loss, args, state, make_ref, compiles):
  """Compiles jit(value_and_grad(loss)) for (*args, *refs made from state)
  (plain arrays when make_ref is None); returns its static figures and a
  `step` that runs it once and returns the seconds it took. Trace+compile
  time: the best of `compiles` runs, JAX's caches cleared."""
  fresh = lambda: [make_ref(s) for s in state] if make_ref else list(state)
  compile_s = []
  for _ in range(compiles):
    jax.clear_caches()
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(*args, *fresh()).compile()
    compile_s.append(time.perf_counter() - t0)
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1
  res = sum(_nbytes(a) for a, _ in
            ad_checkpoint.saved_residuals(loss, *args, *fresh()))
  out = compiled(*args, *fresh())  # also the warm-up run
  jax.block_until_ready(out)
  # The step's peak when the variant runs alone in its process (--isolate).
  peak = _peak_bytes()
  refs = fresh()  # mutated by every call: the cost does not depend on values

  def step():
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args, *refs))
    return time.perf_counter() - t0
  return dict(temp_bytes=temp, residual_bytes=res, compile_s=min(compile_s),
              value=float(out[0]), peak_bytes=peak), step


def try_prepare(*a):
  try:
    return prepare(*a)
  except Exception as e:  # JAX itself fails on some ref programs
    return dict(temp_bytes=None, residual_bytes=None, compile_s=None,
                value=float("nan"), peak_bytes=None,
                error=f"{type(e).__name__}: {e}"[:200]), None


def prepare_variant(w, k, compiles, must_compile="AB", make_ref=jax.new_ref):
  """prepare() of variant k of Workload w. A variant in `must_compile` that
  fails raises; any other gives a row with its error."""
  if k == "B":
    return prepare(w.pure, w.args, w.state, None, compiles)
  if k == "U":
    # Upstream's remat returns the refs themselves as residuals of its own
    # partial eval, which jit rejects unless JAX's returned-ref check is off.
    with jax_remat_refs.upstream_behavior(), config.mutable_array_checks(False):
      return try_prepare(w.with_ref(jax.remat), w.args, w.state, make_ref,
                         compiles)
  rm = jax.remat if k == "A" else (lambda f: f)
  prep = prepare if k in must_compile else try_prepare
  return prep(w.with_ref(rm), w.args, w.state, make_ref, compiles)


def run_workload(name, build, reps, compiles):
  """Static figures and median step time of A, B, C and U; the steps are
  timed interleaved (A, B, C, U, A, ...) so that load on the machine
  reaches all four alike."""
  w = build()
  rows, steps = {}, {}
  for k in VARIANTS:
    rows[k], steps[k] = prepare_variant(w, k, compiles)
  for k in "AC":
    if abs(rows[k]["value"] - rows["B"]["value"]) > 1e-3 * max(1, abs(rows["B"]["value"])):
      raise AssertionError(f"{name}: {k}'s value differs from the pure program's")
  times = {k: [] for k, step in steps.items() if step is not None}
  for _ in range(reps):
    for k in times:
      times[k].append(steps[k]())
  for k, row in rows.items():
    row["step_ms"] = 1e3 * statistics.median(times[k]) if k in times else None
  return rows


def run_isolated(name, script, flags):
  """run_workload's rows, each variant in a process of its own (so that the
  device's peak memory is that variant's): `script --only name --variant k
  *flags`, which prints the row as its last JSON line (one_variant)."""
  rows = {}
  for k in VARIANTS:
    cmd = [sys.executable, script, "--only", name, "--variant", k, *flags]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    rows[k] = (json.loads(line[-1]) if line else
               dict(temp_bytes=None, residual_bytes=None, compile_s=None,
                    step_ms=None, peak_bytes=None,
                    error=(out.stderr or out.stdout)[-300:]))
  return rows


def one_variant(build, k, reps, compiles):
  """Variant k of a workload alone: its row, printed as one JSON line (a
  failure of any but B is a row with its error)."""
  row, step = prepare_variant(build(), k, compiles, must_compile="B")
  if step is not None:
    row["step_ms"] = 1e3 * statistics.median(step() for _ in range(reps))
    row["peak_bytes"] = _peak_bytes()
  else:
    row["step_ms"] = None
  print(json.dumps(row))


def trace_scaling(n_steps, reps=5):
  """Best-of-`reps` time to trace jit(value_and_grad) of a remat body of
  `n_steps` read-compute-write steps on a ref (A) and of the same body with
  the state threaded (B); also the number of equations in A's body."""
  body_ref, body_pure = scaling_bodies(n_steps)
  x = jnp.ones(4)
  def loss_a(x, r):
    return jax.remat(body_ref)(x, r)
  def loss_b(x, s):
    out, s = jax.remat(body_pure)(x, s)
    return out + s.sum()

  def best(loss, state):
    ts = []
    for _ in range(reps):
      jax.clear_caches()
      t0 = time.perf_counter()
      jax.jit(jax.value_and_grad(loss)).trace(x, state())
      ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)
  a = best(loss_a, lambda: jax.new_ref(jnp.ones(4)))
  b = best(loss_b, lambda: jnp.ones(4))
  eqns = len(jax.make_jaxpr(body_ref)(x, jax.new_ref(jnp.ones(4))).eqns)
  return a, b, eqns
