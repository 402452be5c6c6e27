"""The figures of the design answer (docs/upstream-design.md), on one JAX.

    python build/design_figures.py [--flax]

Run with jax_remat_refs made unimportable, on the JAX first on the path:
pristine (e.g. PYTHONPATH=build/out/patches/jax-0.12.0.1/pristine) or
patched (a fork venv, or PYTHONPATH=.../tree). Prints one JSON object:

  seed            the issue's program: (grad, final ref)
  grad_through    d/dy of `r[...] = 2 y; return r[...] ** 2` at y = 1.5, r a
                  ref made inside the differentiated function: default kind
                  and no_grad_no_remat, without and with remat
  stacked_weights residual bytes of a remat'd scan over 8 layers reading
                  stacked weights from a ref, and from an array
  flax            (--flax) three ref-backed Flax NNX blocks Linear ->
                  BatchNorm -> tanh -> Dropout, two steps of the input
                  gradient, jax.remat per block against no remat: max grad
                  difference, max running-mean difference, Dropout counters
"""
from __future__ import annotations

import json
import sys

sys.modules["jax_remat_refs"] = None

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax._src.ad_checkpoint import saved_residuals  # noqa: E402


def no_remat(f):
  return f


def seed():
  @jax.remat
  def f(y, x_ref):
    out = y * x_ref[...]
    x_ref[...] += 1
    return out
  x_ref = jax.new_ref(1.)
  return float(jax.grad(f)(1., x_ref)), float(x_ref[...])


def grad_through():
  out = {}
  for kind in (None, "no_grad_no_remat"):
    for name, remat in (("no remat", no_remat), ("remat", jax.remat)):
      def loss(y):
        r = jax.new_ref(0., kind=kind) if kind else jax.new_ref(0.)
        def f(y):
          r[...] = 2. * y
          return r[...] ** 2
        return remat(f)(y)
      try:
        out[f"{kind or 'default'}, {name}"] = float(jax.grad(loss)(1.5))
      except Exception as e:  # noqa: BLE001
        out[f"{kind or 'default'}, {name}"] = (
            f"{type(e).__name__}: {str(e)[:120]}")
  return out


def stacked_weights():
  x = jnp.ones((4, 64))
  ws = jnp.ones((8, 64, 64)) / 64.
  def loss(in_ref, x, ws):
    w = jax.new_ref(ws) if in_ref else ws
    def layer(h, i):
      return jnp.tanh(h @ w[i]), None
    h, _ = jax.lax.scan(jax.remat(layer), x, jnp.arange(ws.shape[0]))
    return jnp.sum(h ** 2)
  def nbytes(in_ref):
    res = saved_residuals(jax.jit(lambda x, ws: loss(in_ref, x, ws)), x, ws)
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a, _ in res))
  return {"weights in a ref": nbytes(True), "weights in an array":
          nbytes(False), "weights": int(ws.size * 4)}


def flax():
  from flax import nnx

  class Block(nnx.Module):
    def __init__(self, d, rngs):
      self.lin = nnx.Linear(d, d, rngs=rngs)
      self.bn = nnx.BatchNorm(d, momentum=0.5, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.drop(jnp.tanh(self.bn(self.lin(x))))

  def run(remat):
    with nnx.var_defaults(ref=True):
      blocks = [Block(16, nnx.Rngs(params=i, dropout=10 + i))
                for i in range(3)]
    x = jnp.linspace(-1., 1., 128).reshape(8, 16)
    grads = []
    for _ in range(2):
      def loss(x):
        h = x
        for b in blocks:
          b = jax.tree.map(lambda leaf: leaf, b)
          h = remat(lambda b, h: b(h))(b, h)
        return jnp.sum(h ** 2)
      grads.append(jax.grad(loss)(x))
    means = [np.asarray(b.bn.mean[...]) for b in blocks]
    counts = [int(b.drop.rngs.count[...]) for b in blocks]
    return grads, means, counts

  g0, m0, c0 = run(no_remat)
  g1, m1, c1 = run(jax.remat)
  return {
      "max grad diff": float(max(np.max(np.abs(a - b))
                                 for a, b in zip(g0, g1))),
      "max running-mean diff": float(max(np.max(np.abs(a - b))
                                         for a, b in zip(m0, m1))),
      "dropout counters (no remat, remat)": [c0, c1]}


def _run(f):
  try:
    return f()
  except Exception as e:  # noqa: BLE001  (a figure: what this JAX raises)
    return f"{type(e).__name__}: {str(e)[:200]}"


def main():
  out = {"jax": jax.__version__}
  for f in (seed, grad_through, stacked_weights,
            *((flax,) if "--flax" in sys.argv else ())):
    out[f.__name__] = _run(f)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
