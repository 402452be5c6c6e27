"""`make demo`: the seed program and a larger one, upstream vs patched; then
the Flax NNX demo (demo_flax.py, beside this file) where Flax is installed.

Each row prints what the same program gives without jax.remat (the oracle),
with upstream JAX's remat, and with jax_remat_refs.

    python examples/demo.py              # everything
    python examples/demo.py --seed-only  # the seed program only; exit 1 if wrong
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import jax_remat_refs


def seed(y, x_ref):
  out = y * x_ref[...]
  x_ref[...] += 1
  return out


def run_seed(rm):
  x_ref = jax.new_ref(1.)
  g = jax.grad(rm(seed))(1., x_ref)
  return float(g), float(x_ref[...])


def nested3(rm):
  f = rm(rm(rm(seed)))
  return run_seed(lambda _: f)


def scan3(rm):
  r = jax.new_ref(1.)
  body = rm(seed)
  g = jax.grad(lambda y: lax.scan(lambda c, _: (body(c, r), None), y, None,
                                  length=3)[0])(1.)
  return float(g), float(r[...])


def mlp_with_stats(rm):
  """A 4-layer scan(remat(layer)) MLP that accumulates activation
  statistics into a ref, the kind of state users keep in refs."""
  key = jax.random.key(0)
  ws = jax.random.normal(key, (4, 16, 16)) / 4.0
  x = jax.random.normal(jax.random.key(1), (8, 16))
  stats = jax.new_ref(jnp.zeros(16))

  def layer(h, w):
    h = jnp.tanh(h @ w)
    # the layer reads the running statistics and adds to them
    h = h + 0.1 * stats[...]
    stats[...] += lax.stop_gradient(h.mean(0))
    return h

  def loss(ws, x):
    h, _ = lax.scan(lambda h, w: (rm(layer)(h, w), None), x, ws)
    return (h ** 2).sum()

  g = jax.grad(loss)(ws, x)
  return float(jnp.abs(g).sum()), float(stats[...].sum())


def identity(f):
  return f


def check_seed() -> int:
  """The seed program only: grad 1.0, ref 2.0 (upstream: 2.0, 3.0)."""
  got = run_seed(jax.remat)
  print(f"jax {jax.__version__}: seed program grad {got[0]}, ref {got[1]} "
        f"(expected 1.0, 2.0)")
  return 0 if got == (1.0, 2.0) else 1


def main(argv=None):
  import sys
  if "--seed-only" in (sys.argv[1:] if argv is None else argv):
    raise SystemExit(check_seed())
  rows = [("seed program", run_seed), ("3 nested remats", nested3),
          ("scan of remat, 3 steps", scan3),
          ("scan(remat(layer)) MLP + stats ref", mlp_with_stats)]
  print(f"jax {jax.__version__}; values are (gradient, final ref)")
  print(f"{'program':38s} {'no remat (oracle)':>22s} {'upstream remat':>22s} "
        f"{'jax_remat_refs':>22s}")
  fmt = lambda t: f"({t[0]:.4g}, {t[1]:.4g})"
  for name, prog in rows:
    oracle = prog(identity)
    with jax_remat_refs.upstream_behavior():
      upstream = prog(jax.remat)
    patched = prog(jax.remat)
    ok = "ok" if all(abs(a - b) <= 1e-4 * max(1., abs(a))
                     for a, b in zip(oracle, patched)) else "MISMATCH"
    print(f"{name:38s} {fmt(oracle):>22s} {fmt(upstream):>22s} "
          f"{fmt(patched):>22s}  {ok}")
  try:
    import demo_flax  # beside this file: its folder is sys.path[0]
  except ImportError as e:
    print(f"\n(Flax NNX demo skipped: {e})")
  else:
    print()
    demo_flax.main()


if __name__ == "__main__":
  main()
