"""The programs `benchmarks/run.py` measures.

A workload is one function registered with `@workload(name)`: given the
sizes (`Sizes`: width, batch, dtype) and, where its name has `{L}`, a layer
count L (one workload per L of --Ls), it returns a `Workload`:
  with_ref(rm)  the ref program, called as loss(*args, *refs) with one ref
                per `state` array (made fresh, outside jit, for every
                measurement, as a user keeps state), rm the remat;
  pure          pure(*args, *state): the same values with the state threaded
                functionally (remat included);
  args, state   args[0] is differentiated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass(frozen=True)
class Sizes:
  width: int = 128
  batch: int = 16
  dtype: Any = jnp.float32  # of weights and activations

  def data(self, key, shape, scale=1.0):
    return (jax.random.normal(jax.random.key(key), shape) * scale
            ).astype(self.dtype)


class Workload(NamedTuple):
  with_ref: Callable
  pure: Callable
  args: tuple
  state: tuple


class Entry(NamedTuple):
  name: str          # with "{L}": one workload per layer count
  build: Callable    # build(sizes, L) or build(sizes) -> Workload
  at: Callable       # at(Ls): the layer counts it runs at


REGISTRY: list[Entry] = []


def workload(name, at=lambda Ls: Ls):
  """Registers `build` under `name`; `at` picks the layer counts of --Ls it
  runs at (all of them by default; ignored when `name` has no "{L}")."""
  def register(build):
    REGISTRY.append(Entry(name, build, at))
    return build
  return register


def workload_list(Ls, sizes):
  """[(name, build)] for every workload at the layer counts Ls, in the
  order registered; build() -> Workload."""
  out = []
  for e in REGISTRY:
    if "{L}" not in e.name:
      out.append((e.name, lambda e=e: e.build(sizes)))
      continue
    out += [(e.name.format(L=L), lambda e=e, L=L: e.build(sizes, L))
            for L in e.at(Ls)]
  return out


# --------------------------------------------------------------------------

@workload("1 seed x1e6")
def seed_scaled(sz, n=1_000_000):
  y = jnp.ones((n,), sz.dtype)
  x0 = jnp.linspace(0., 1., n, dtype=sz.dtype)

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
  return Workload(with_ref, pure, (y,), (x0,))


@workload("2 scan(remat) stats L={L}")
def mlp_stats(sz, L):
  ws = sz.data(0, (L, sz.width, sz.width), 1 / np.sqrt(sz.width))
  x = sz.data(1, (sz.batch, sz.width))

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
  return Workload(with_ref, pure, (ws, x), (jnp.zeros(sz.width, sz.dtype),))


@workload("3 stacked w_ref[i] L={L}")
def stacked_weights(sz, L, outer=False, batch=None):
  """Weights in one stacked ref read by slice, never written; x is
  differentiated (the weights are state). outer: one remat around the whole
  scan instead of one per layer."""
  ws = sz.data(0, (L, sz.width, sz.width), 1 / np.sqrt(sz.width))
  x = sz.data(1, (batch or sz.batch, sz.width))

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
  return Workload(with_ref, pure, (x,), (ws,))


BIG_BATCH = 256


# At batch 16 a layer's matmul costs about what reading its weights does; a
# larger batch shows per-byte costs against more compute. At one L: the
# second of --Ls (the only one when one is given).
@workload(f"3 stacked L={{L}} batch {BIG_BATCH}",
          at=lambda Ls: [Ls[min(1, len(Ls) - 1)]])
def stacked_weights_big_batch(sz, L):
  return stacked_weights(sz, L, batch=BIG_BATCH)


@workload("3 remat(scan) w_ref[i] L={L}")
def stacked_weights_outer(sz, L):
  return stacked_weights(sz, L, outer=True)


@workload("4 cache write/read L={L}")
def cache_like(sz, L):
  x = sz.data(1, (sz.batch, sz.width))

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
  return Workload(with_ref, pure, (x,), (jnp.zeros((L, sz.width), sz.dtype),))


# --------------------------------------------------------------------------
# Trace-time scaling: a remat body of n_steps read-compute-write steps.

def scaling_bodies(n_steps):
  """(body_ref(x, r), body_pure(x, s) -> (out, s)): the same n_steps steps
  on a ref of 4 and threaded as a value."""
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
  return body_ref, body_pure
