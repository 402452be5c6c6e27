"""`make bench`: cost of refs + jax.remat against the pure-functional program.

For each workload, the same values and gradients are computed by
  A  refs + jax.remat with jax_remat_refs,
  B  the pure-functional rewrite (state threaded through args/outputs) + remat,
  C  refs without remat,
  U  refs + jax.remat on upstream JAX (package deactivated; wrong where refs
     are written, but its cost is what refs cost in JAX itself; run with
     jax_mutable_array_checks off, without which upstream's remat does not
     compile with ref arguments under jit).
Refs are made outside jit and passed in, as a user keeps state.
Reported per program: XLA temp bytes of the compiled step, residual bytes
(`saved_residuals`), median step time (A, B, C and U timed interleaved,
60 steps each), trace+compile time (best of 5, JAX's caches cleared); then
the ratios A/B, A/C and A/U, U/B for step and compile time (what refs cost in
JAX itself) and A-B compile milliseconds. Results also go to
benchmarks/results/bench-jax<version>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import ad_checkpoint  # saved_residuals is not public
from jax._src import config

import jax_remat_refs

WIDTH = 128
BATCH = 16
DTYPE = jnp.float32   # of weights and activations (--dtype)


def _data(key, shape, scale=1.0):
  return (jax.random.normal(jax.random.key(key), shape) * scale).astype(DTYPE)


def _nbytes(aval):
  if not hasattr(aval, "dtype") or hasattr(aval, "inner_aval"):
    return 0  # a ref passed by reference (read-only): no bytes saved
  return int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize


# --------------------------------------------------------------------------
# Workloads. Each builder returns (with_ref, pure, args, state): with_ref(rm)
# is the ref program, called as loss(*args, *refs) with one ref per `state`
# array, made fresh (outside jit) for every measurement, as a user keeps
# state; pure(*args, *state) threads the same state functionally. args[0] is
# differentiated. Each builder also says how its refs are made.

def seed_scaled(n=1_000_000):
  y = jnp.ones((n,), DTYPE)
  x0 = jnp.linspace(0., 1., n, dtype=DTYPE)

  def body_ref(y, x_ref):
    out = y * x_ref[...]
    x_ref[...] += 1
    return out.sum()

  def with_ref(rm):
    def loss(y, x_ref):
      return rm(body_ref)(y, x_ref) + x_ref[...].sum()
    return loss

  def pure(y, x0):
    def body(y, x):
      return (y * x).sum(), x + 1
    out, x = jax.remat(body)(y, x0)
    return out + x.sum()
  return with_ref, pure, (y,), (x0,)


def mlp_stats(L):
  ws = _data(0, (L, WIDTH, WIDTH), 1 / np.sqrt(WIDTH))
  x = _data(1, (BATCH, WIDTH))

  def layer_ref(stats, h, w):
    h = jnp.tanh(h @ w)
    stats[...] += lax.stop_gradient(h.mean(0))
    return h

  def with_ref(rm):
    def loss(ws, x, stats):
      h, _ = lax.scan(lambda h, w: (rm(lambda h, w: layer_ref(stats, h, w))(h, w),
                                    None), x, ws)
      return (h ** 2).sum() + stats[...].sum()
    return loss

  def pure(ws, x, stats):
    def layer(carry, w):
      h, stats = carry
      h = jnp.tanh(h @ w)
      return (h, stats + lax.stop_gradient(h.mean(0))), None
    (h, stats), _ = lax.scan(jax.remat(layer), (x, stats), ws)
    return (h ** 2).sum() + stats.sum()
  return with_ref, pure, (ws, x), (jnp.zeros(WIDTH, DTYPE),)


def stacked_weights(L, outer=False, batch=None):
  """Weights in one stacked ref read by slice, never written; x is
  differentiated (the weights are state)."""
  ws = _data(0, (L, WIDTH, WIDTH), 1 / np.sqrt(WIDTH))
  x = _data(1, (batch or BATCH, WIDTH))

  def with_ref(rm):
    def loss(x, w_ref):
      def layer(h, i):
        return jnp.tanh(h @ w_ref[i])
      def net(x):
        h, _ = lax.scan(lambda h, i: (layer(h, i) if outer else rm(layer)(h, i),
                                      None), x, jnp.arange(L))
        return h
      h = rm(net)(x) if outer else net(x)
      return (h ** 2).sum()
    return loss

  def pure(x, ws):
    def layer(h, i):
      return jnp.tanh(h @ ws[i])
    def net(x):
      h, _ = lax.scan(lambda h, i: (layer(h, i) if outer else jax.remat(layer)(h, i),
                                    None), x, jnp.arange(L))
      return h
    h = jax.remat(net)(x) if outer else net(x)
    return (h ** 2).sum()
  return with_ref, pure, (x,), (ws,)


def cache_like(L):
  x = _data(1, (BATCH, WIDTH))

  def with_ref(rm):
    def loss(x, cache):
      def step(h, i):
        cache[i] = lax.stop_gradient(h.mean(0))
        return jnp.tanh(h + cache[...].mean(0))
      h, _ = lax.scan(lambda h, i: (rm(step)(h, i), None), x, jnp.arange(L))
      return (h ** 2).sum() + cache[...].sum()
    return loss

  def pure(x, cache):
    def step(carry, i):
      h, cache = carry
      cache = cache.at[i].set(lax.stop_gradient(h.mean(0)))
      return (jnp.tanh(h + cache.mean(0)), cache), None
    (h, cache), _ = lax.scan(jax.remat(step), (x, cache), jnp.arange(L))
    return (h ** 2).sum() + cache.sum()
  return with_ref, pure, (x,), (jnp.zeros((L, WIDTH), DTYPE),)


# --------------------------------------------------------------------------

COMPILES = 5  # trace+compile time: the best of this many, caches cleared


def prepare(loss, args, state, make_ref):
  """Compiles jit(value_and_grad(loss)) for (*args, *refs made from state)
  (plain arrays when make_ref is None); returns its static figures and a
  `step` that runs it once and returns the seconds it took."""
  fresh = lambda: [make_ref(s) for s in state] if make_ref else list(state)
  compile_s = []
  for _ in range(COMPILES):
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
  # The device's peak so far: the step's peak when the variant runs alone in
  # its process (--isolate); None where the backend keeps no statistics.
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
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
                value=float("nan"), peak_bytes=None, error=f"{type(e).__name__}: {e}"[:200]), None


def run_workload(name, builder, reps, make_ref=jax.new_ref):
  """Static figures and median step time of A, B, C and U; the steps are
  timed interleaved (A, B, C, U, A, ...) so that load on the machine
  reaches all four alike."""
  with_ref, pure, args, state = builder()
  rows, steps = {}, {}
  rows["A"], steps["A"] = prepare(with_ref(jax.remat), args, state, make_ref)
  rows["B"], steps["B"] = prepare(pure, args, state, None)
  rows["C"], steps["C"] = try_prepare(with_ref(lambda f: f), args, state,
                                      make_ref)
  # Upstream's remat returns the refs themselves as residuals of its own
  # partial eval, which jit rejects unless JAX's returned-ref check is off.
  with jax_remat_refs.upstream_behavior(), config.mutable_array_checks(False):
    rows["U"], steps["U"] = try_prepare(with_ref(jax.remat), args, state,
                                        make_ref)
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


def trace_scaling(n_steps, reps=5):
  """Best-of-`reps` time to trace jit(value_and_grad) of a remat body of
  `n_steps` read-compute-write steps on a ref (A) and of the same body with
  the state threaded (B); also the number of equations in A's body."""
  def body_ref(x, r):
    for k in range(n_steps):
      r[k % 4] = lax.stop_gradient(jnp.sin(x[k % 4] * r[(k + 1) % 4]))
      x = x * r[k % 4]
    return x.sum()

  def body_pure(x, s):
    for k in range(n_steps):
      s = s.at[k % 4].set(lax.stop_gradient(jnp.sin(x[k % 4] * s[(k + 1) % 4])))
      x = x * s[k % 4]
    return x.sum(), s

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


def ratio(a, b, floor=0):
  """a/b, each counted as at least `floor` (temp bytes: a few scalars are
  not a difference); 1.0 when both are 0; nan when either is missing (a
  program that failed) or only one is 0."""
  if a is None or b is None or a < 0 or b < 0:
    return float("nan")
  a, b = max(a, floor), max(b, floor)
  if (a == 0) != (b == 0):
    return float("nan")
  return 1.0 if a == b == 0 else a / b


TEMP_FLOOR = 1024


def _fmt(x, width):
  """Two decimals; ratios below 0.01 in scientific notation."""
  return f"{x:{width}.1e}" if 0 < x < 0.01 else f"{x:{width}.2f}"


def workload_list(Ls, big_batch=256):
  """(name, builder, make_ref) for every workload at the given sizes."""
  def ro(x):  # deprecated; measured to show it no longer buys anything
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      return jax_remat_refs.read_only_ref(x)
  w = [("1 seed x1e6", seed_scaled, jax.new_ref)]
  w += [(f"2 scan(remat) stats L={L}", lambda L=L: mlp_stats(L), jax.new_ref)
        for L in Ls]
  w += [(f"3 stacked w_ref[i] L={L}", lambda L=L: stacked_weights(L),
         jax.new_ref) for L in Ls]
  w += [(f"3 read-only w_ref[i] L={L}", lambda L=L: stacked_weights(L), ro)
        for L in Ls]
  if big_batch:
    # At batch 16 a layer's matmul costs about what reading its weights
    # does; a larger batch shows per-byte costs against more compute.
    L = Ls[min(1, len(Ls) - 1)]
    w += [(f"3 stacked L={L} batch {big_batch}",
           lambda: stacked_weights(L, batch=big_batch), jax.new_ref),
          (f"3 read-only L={L} batch {big_batch}",
           lambda: stacked_weights(L, batch=big_batch), ro)]
  w += [(f"3 remat(scan) w_ref[i] L={L}",
         lambda L=L: stacked_weights(L, outer=True), jax.new_ref) for L in Ls]
  w += [(f"3 remat(scan) read-only L={L}",
         lambda L=L: stacked_weights(L, outer=True), ro) for L in Ls]
  w += [(f"4 cache write/read L={L}", lambda L=L: cache_like(L), jax.new_ref)
        for L in Ls]
  return w


def _isolated(name, ns):
  """run_workload's rows, each variant in a process of its own (so that the
  device's peak memory is that variant's)."""
  import subprocess
  rows = {}
  for k in "ABCU":
    cmd = [sys.executable, __file__, "--only", name, "--variant", k,
           "--width", str(WIDTH), "--batch", str(BATCH), "--dtype",
           np.dtype(DTYPE).name, "--reps", str(ns.reps), "--Ls",
           ",".join(map(str, ns.Ls)), "--compiles", str(ns.compiles)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    rows[k] = (json.loads(line[-1]) if line else
               dict(temp_bytes=None, residual_bytes=None, compile_s=None,
                    step_ms=None, peak_bytes=None,
                    error=(out.stderr or out.stdout)[-300:]))
  return rows


def _one_variant(name, k, ns):
  (builder, make_ref), = [(b, m) for n, b, m in workload_list(ns.Ls) if n == name]
  with_ref, pure, args, state = builder()
  if k == "B":
    row, step = prepare(pure, args, state, None)
  elif k == "U":
    with jax_remat_refs.upstream_behavior(), config.mutable_array_checks(False):
      row, step = try_prepare(with_ref(jax.remat), args, state, make_ref)
  else:
    row, step = try_prepare(with_ref(jax.remat if k == "A" else (lambda f: f)),
                            args, state, make_ref)
  if step is not None:
    row["step_ms"] = 1e3 * statistics.median(step() for _ in range(ns.reps))
    row["peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get(
        "peak_bytes_in_use")
  else:
    row["step_ms"] = None
  print(json.dumps(row))


def main(argv=None):
  global WIDTH, BATCH, DTYPE, COMPILES
  p = argparse.ArgumentParser()
  p.add_argument("--reps", type=int, default=60)
  p.add_argument("--quick", action="store_true", help="L=8 only")
  p.add_argument("--Ls", default="8,32,128", help="layer counts, e.g. 32,128")
  p.add_argument("--width", type=int, default=WIDTH)
  p.add_argument("--batch", type=int, default=BATCH)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--compiles", type=int, default=COMPILES)
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
  WIDTH, BATCH, COMPILES = ns.width, ns.batch, ns.compiles
  DTYPE = jnp.dtype(ns.dtype)
  if ns.variant:
    return _one_variant(ns.only, ns.variant, ns)
  only = ns.only.split(",") if ns.only else None
  workloads = [w for w in workload_list(ns.Ls)
               if not only or any(o in w[0] for o in only)]
  print(f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} cpus, "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}); "
        f"width {WIDTH}, batch {BATCH}, {np.dtype(DTYPE).name}")
  hdr = (f"{'workload':30s} {'mem A/B':>8s} {'mem A/C':>8s} {'mem A/U':>8s} "
         f"{'res A/B':>8s} {'time A/B':>8s} {'U/B':>6s} {'compile A/B':>11s} "
         f"{'U/B':>6s} {'A-B ms':>7s} {'peak A/B':>8s}")
  print(hdr)
  results = {}
  for name, builder, make_ref in workloads:
    rows = (_isolated(name, ns) if ns.isolate else
            run_workload(name, builder, ns.reps, make_ref))
    A, B, C, U = (rows[k] for k in "ABCU")
    r = dict(mem_AB=ratio(A["temp_bytes"], B["temp_bytes"], TEMP_FLOOR),
             mem_AC=ratio(A["temp_bytes"], C["temp_bytes"], TEMP_FLOOR),
             mem_AU=ratio(A["temp_bytes"], U["temp_bytes"], TEMP_FLOOR),
             res_AB=ratio(A["residual_bytes"], B["residual_bytes"]),
             time_AB=ratio(A["step_ms"], B["step_ms"]),
             time_UB=ratio(U["step_ms"], B["step_ms"]),
             time_AU=ratio(A["step_ms"], U["step_ms"]),
             compile_AB=ratio(A["compile_s"], B["compile_s"]),
             compile_UB=ratio(U["compile_s"], B["compile_s"]),
             compile_A_minus_B_ms=(1e3 * (A["compile_s"] - B["compile_s"])
                                   if None not in (A["compile_s"], B["compile_s"])
                                   else float("nan")),
             peak_AB=ratio(A.get("peak_bytes"), B.get("peak_bytes")),
             peak_AU=ratio(A.get("peak_bytes"), U.get("peak_bytes")))
    results[name] = dict(rows=rows, ratios=r)
    print(f"{name:30s} {_fmt(r['mem_AB'], 8)} {_fmt(r['mem_AC'], 8)} "
          f"{_fmt(r['mem_AU'], 8)} {_fmt(r['res_AB'], 8)} "
          f"{_fmt(r['time_AB'], 8)} {_fmt(r['time_UB'], 6)} "
          f"{_fmt(r['compile_AB'], 11)} {_fmt(r['compile_UB'], 6)} "
          f"{r['compile_A_minus_B_ms']:7.0f} {_fmt(r['peak_AB'], 8)}",
          flush=True)
  scaling = {}
  if not ns.no_scaling:
    print()
    print("trace time of jit(value_and_grad) against remat body size "
          "(equations in the body; A refs, B pure):")
    print(f"{'body eqns':>10s} {'A ms':>8s} {'B ms':>8s} {'A/B':>6s} "
          f"{'A us/eqn':>9s}")
    for n in (100, 400, 1600):
      a_ms, b_ms, eqns = trace_scaling(n)
      scaling[n] = dict(A_ms=a_ms, B_ms=b_ms, body_eqns=eqns)
      print(f"{eqns:10d} {a_ms:8.1f} {b_ms:8.1f} {a_ms / b_ms:6.2f} "
            f"{1e3 * a_ms / eqns:9.1f}", flush=True)
  out = ns.json or f"benchmarks/results/bench-jax{jax.__version__}.json"
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(dict(jax=jax.__version__, date=time.strftime("%Y-%m-%d"),
                   machine=platform.platform(),
                   backend=jax.devices()[0].platform,
                   device=jax.devices()[0].device_kind,
                   width=WIDTH, batch=BATCH, dtype=np.dtype(DTYPE).name,
                   results=results, trace_scaling=scaling), f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
