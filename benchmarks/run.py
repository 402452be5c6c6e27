"""`make bench`: cost of refs + jax.remat against the pure-functional program.

For each workload, the same values and gradients are computed by
  A  refs + jax.remat with jax_remat_refs,
  B  the pure-functional rewrite (state threaded through args/outputs) + remat,
  C  refs without remat,
  U  refs + jax.remat on upstream JAX (package deactivated; wrong where refs
     are written, but its cost is what refs cost in JAX itself).
Reported per program: XLA temp bytes of the compiled step, residual bytes
(`saved_residuals`), median step time, trace+compile time; then the ratios
A/B, A/C and A/U. Results also go to benchmarks/results/bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import ad_checkpoint  # saved_residuals is not public

import jax_remat_refs

WIDTH = 128
BATCH = 16


def _nbytes(aval):
  if not hasattr(aval, "dtype") or hasattr(aval, "inner_aval"):
    return 0  # a ref passed by reference (read-only): no bytes saved
  return int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize


# --------------------------------------------------------------------------
# Workloads. Each builder returns {variant: (loss_fn, args)} where loss_fn
# returns a scalar and args[0] is differentiated; refs are made inside.

def seed_scaled(n=1_000_000):
  y = jnp.ones((n,), jnp.float32)
  x0 = jnp.linspace(0., 1., n, dtype=jnp.float32)

  def body_ref(y, x_ref):
    out = y * x_ref[...]
    x_ref[...] += 1
    return out.sum()

  def with_ref(rm):
    def loss(y, x0):
      r = jax.new_ref(x0)
      return rm(body_ref)(y, r) + r[...].sum()
    return loss

  def pure(y, x0):
    def body(y, x):
      return (y * x).sum(), x + 1
    out, x = jax.remat(body)(y, x0)
    return out + x.sum()
  return with_ref, pure, (y, x0)


def mlp_stats(L):
  ws = jax.random.normal(jax.random.key(0), (L, WIDTH, WIDTH)) / np.sqrt(WIDTH)
  x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH))

  def layer_ref(stats, h, w):
    h = jnp.tanh(h @ w)
    stats[...] += lax.stop_gradient(h.mean(0))
    return h

  def with_ref(rm):
    def loss(ws, x):
      stats = jax.new_ref(jnp.zeros(WIDTH))
      h, _ = lax.scan(lambda h, w: (rm(lambda h, w: layer_ref(stats, h, w))(h, w),
                                    None), x, ws)
      return (h ** 2).sum() + stats[...].sum()
    return loss

  def pure(ws, x):
    def layer(carry, w):
      h, stats = carry
      h = jnp.tanh(h @ w)
      return (h, stats + lax.stop_gradient(h.mean(0))), None
    (h, stats), _ = lax.scan(jax.remat(layer), (x, jnp.zeros(WIDTH)), ws)
    return (h ** 2).sum() + stats.sum()
  return with_ref, pure, (ws, x)


def stacked_weights(L, outer=False, read_only=False):
  """Weights in one stacked ref read by slice, never written; x is
  differentiated (the weights are state). With `read_only`, the ref is made
  by `jax_remat_refs.read_only_ref` (rematerialized from the live ref)."""
  make_ref = jax_remat_refs.read_only_ref if read_only else jax.new_ref
  ws = jax.random.normal(jax.random.key(0), (L, WIDTH, WIDTH)) / np.sqrt(WIDTH)
  x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH))

  def with_ref(rm):
    def loss(x, ws):
      w_ref = make_ref(ws)
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
  return with_ref, pure, (x, ws)


def cache_like(L):
  x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH))

  def with_ref(rm):
    def loss(x):
      cache = jax.new_ref(jnp.zeros((L, WIDTH)))
      def step(h, i):
        cache[i] = lax.stop_gradient(h.mean(0))
        return jnp.tanh(h + cache[...].mean(0))
      h, _ = lax.scan(lambda h, i: (rm(step)(h, i), None), x, jnp.arange(L))
      return (h ** 2).sum() + cache[...].sum()
    return loss

  def pure(x):
    def step(carry, i):
      h, cache = carry
      cache = cache.at[i].set(lax.stop_gradient(h.mean(0)))
      return (jnp.tanh(h + cache.mean(0)), cache), None
    (h, cache), _ = lax.scan(jax.remat(step), (x, jnp.zeros((L, WIDTH))),
                             jnp.arange(L))
    return (h ** 2).sum() + cache.sum()
  return with_ref, pure, (x,)


# --------------------------------------------------------------------------

def measure(loss, args, reps):
  grad = jax.jit(jax.value_and_grad(loss))
  t0 = time.perf_counter()
  compiled = grad.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1
  res = sum(_nbytes(a) for a, _ in ad_checkpoint.saved_residuals(loss, *args))
  out = compiled(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return dict(temp_bytes=temp, residual_bytes=res,
              step_ms=1e3 * statistics.median(times), compile_s=compile_s,
              value=float(out[0]))


def try_measure(loss, args, reps):
  try:
    return measure(loss, args, reps)
  except Exception as e:  # JAX itself fails on some ref programs
    return dict(temp_bytes=0, residual_bytes=0, step_ms=0, compile_s=0,
                value=float("nan"), error=f"{type(e).__name__}: {e}"[:200])


def run_workload(name, builder, reps):
  with_ref, pure, args = builder()
  rows = {}
  rows["A"] = measure(with_ref(jax.remat), args, reps)
  rows["B"] = measure(pure, args, reps)
  rows["C"] = try_measure(with_ref(lambda f: f), args, reps)
  with jax_remat_refs.upstream_behavior():
    rows["U"] = try_measure(with_ref(jax.remat), args, reps)
  if abs(rows["A"]["value"] - rows["B"]["value"]) > 1e-3 * max(1, abs(rows["B"]["value"])):
    raise AssertionError(f"{name}: A's value differs from the pure program's")
  return rows


def ratio(a, b):
  return a / b if a and b and a > 0 and b > 0 else float("nan")


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--quick", action="store_true", help="L=8 only")
  ns = p.parse_args(argv)
  Ls = (8,) if ns.quick else (8, 32, 128)
  workloads = [("1 seed x1e6", seed_scaled)]
  workloads += [(f"2 scan(remat) stats L={L}", lambda L=L: mlp_stats(L)) for L in Ls]
  workloads += [(f"3 stacked w_ref[i] L={L}", lambda L=L: stacked_weights(L)) for L in Ls]
  workloads += [(f"3 read-only w_ref[i] L={L}",
                 lambda L=L: stacked_weights(L, read_only=True)) for L in Ls]
  workloads += [(f"3 remat(scan) w_ref[i] L={L}",
                 lambda L=L: stacked_weights(L, outer=True)) for L in Ls]
  workloads += [(f"3 remat(scan) read-only L={L}",
                 lambda L=L: stacked_weights(L, outer=True, read_only=True))
                for L in Ls]
  workloads += [(f"4 cache write/read L={L}", lambda L=L: cache_like(L)) for L in Ls]
  print(f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} cpus, "
        f"{jax.devices()[0].platform}; width {WIDTH}, batch {BATCH}")
  hdr = (f"{'workload':30s} {'mem A/B':>8s} {'mem A/C':>8s} {'mem A/U':>8s} "
         f"{'res A/B':>8s} {'time A/B':>8s} {'U/B':>6s} {'compile A/B':>11s}")
  print(hdr)
  results = {}
  for name, builder in workloads:
    rows = run_workload(name, builder, ns.reps)
    A, B, C, U = (rows[k] for k in "ABCU")
    r = dict(mem_AB=ratio(A["temp_bytes"], B["temp_bytes"]),
             mem_AC=ratio(A["temp_bytes"], C["temp_bytes"]),
             mem_AU=ratio(A["temp_bytes"], U["temp_bytes"]),
             res_AB=ratio(A["residual_bytes"], B["residual_bytes"]),
             time_AB=ratio(A["step_ms"], B["step_ms"]),
             time_UB=ratio(U["step_ms"], B["step_ms"]),
             compile_AB=ratio(A["compile_s"], B["compile_s"]))
    results[name] = dict(rows=rows, ratios=r)
    print(f"{name:30s} {r['mem_AB']:8.2f} {r['mem_AC']:8.2f} {r['mem_AU']:8.2f} "
          f"{r['res_AB']:8.2f} {r['time_AB']:8.2f} {r['time_UB']:6.2f} "
          f"{r['compile_AB']:11.2f}", flush=True)
  os.makedirs("benchmarks/results", exist_ok=True)
  out = f"benchmarks/results/bench-jax{jax.__version__}.json"
  with open(out, "w") as f:
    json.dump(dict(jax=jax.__version__, date=time.strftime("%Y-%m-%d"),
                   machine=platform.platform(), results=results), f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
