"""Flax NNX demo: a ref-backed MLP under remat, upstream vs patched.

The model (issue 8): three blocks of nnx.Linear -> nnx.BatchNorm(momentum
0.5) -> tanh -> nnx.Dropout(0.5), every Variable a `jax.Ref`
(`nnx.var_defaults(ref=True)`). Two training steps take the gradient w.r.t.
the input; BatchNorm running statistics and Dropout RNG counters update
through the refs. Each row compares a remat variant with the same two steps
without remat: the largest gradient difference, the largest running-mean
difference, and the dropout counters (the oracle has one draw per block and
step: 2 each).

    python examples/demo_flax.py

Importing this module without Flax raises ImportError.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_remat_refs
import jax_remat_refs.flax as jrf  # raises ImportError without Flax
from flax import nnx


class Block(nnx.Module):

  def __init__(self, din, dout, rngs):
    self.linear = nnx.Linear(din, dout, rngs=rngs)
    self.bn = nnx.BatchNorm(dout, momentum=0.5, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(jnp.tanh(self.bn(self.linear(x))))


class MLP(nnx.Module):

  def __init__(self, rngs, width=16):
    self.blocks = nnx.List([Block(8, width, rngs), Block(width, width, rngs),
                            Block(width, 4, rngs)])


def _call(block, x):
  return block(x)


VARIANTS = {
    "no remat": lambda b, x: _call(b, x),
    "jax.remat per block": lambda b, x: jax.remat(_call)(b, x),
    "jax_remat_refs.flax.remat": lambda b, x: jrf.remat(_call)(b, x),
    "nnx.remat per block": lambda b, x: nnx.remat(_call)(b, x),
}


def _step(model, x, call):
  def loss(x):
    # rebuild the module's Python objects under the grad trace (same refs):
    # Flax 0.12.8's BatchNorm needs it to stop_gradient its ref updates
    m = jax.tree.map(lambda leaf: leaf, model)
    for block in m.blocks:
      x = call(block, x)
    return jnp.sum(x * jnp.linspace(-1., 1., x.shape[-1])[None])
  return jax.grad(loss)(x)


def train(call, use_jit=False):
  with nnx.var_defaults(ref=True):
    model = MLP(nnx.Rngs(0))
  step = _step
  if use_jit:
    step = jax.jit(lambda m, x, c: _step(m, x, c), static_argnums=2)
  xs = jax.random.normal(jax.random.key(1), (2, 8, 8))
  grads = [np.asarray(step(model, x, call)) for x in xs]
  means = [np.asarray(b.bn.mean[...]) for b in model.blocks]
  counts = [int(b.drop.rngs.count[...]) for b in model.blocks]
  return grads, means, counts


def _compare(result, oracle, tol=1e-4):
  (g, m, c), (g0, m0, c0) = result, oracle
  dg = max(float(np.abs(a - b).max()) for a, b in zip(g, g0))
  dm = max(float(np.abs(a - b).max()) for a, b in zip(m, m0))
  return dg, dm, c, (dg <= tol and dm <= tol and c == c0)


def _cell(variant, use_jit, oracle, upstream):
  try:
    if upstream:
      with jax_remat_refs.upstream_behavior():
        result = train(VARIANTS[variant], use_jit)
    else:
      result = train(VARIANTS[variant], use_jit)
  except Exception as e:  # show the failure in its cell, keep the table
    return f"error: {type(e).__name__}"[:34], False
  dg, dm, counts, ok = _compare(result, oracle)
  return f"{dg:9.2e} {dm:9.2e} {counts}", ok


def main():
  import flax
  print(f"Flax NNX, ref-backed MLP, 2 steps (jax {jax.__version__}, "
        f"flax {flax.__version__})")
  print("cells: max|grad - no-remat grad|  max|running mean - no-remat|  "
        "dropout counters (no remat: [2, 2, 2])")
  header = f"{'variant':32s} {'mode':5s}  {'upstream JAX':34s}  {'jax_remat_refs':34s}"
  print(header)
  print("-" * len(header))
  for use_jit in (False, True):
    mode = "jit" if use_jit else "eager"
    oracle = train(VARIANTS["no remat"], use_jit)
    for variant in ("jax.remat per block", "jax_remat_refs.flax.remat",
                    "nnx.remat per block"):
      if use_jit and variant == "nnx.remat per block":
        continue
      up, _ = _cell(variant, use_jit, oracle, upstream=True)
      patched, ok = _cell(variant, use_jit, oracle, upstream=False)
      print(f"{variant:32s} {mode:5s}  {up:34s}  {patched:34s} "
            f"{'ok' if ok else 'WRONG'}")
  print("nnx.remat loses the running-statistic and counter updates (a Flax "
        "bug, docs/flax-nnx-remat-report.md);\njax_remat_refs.flax.remat is "
        "the drop-in that keeps them.")


if __name__ == "__main__":
  main()
