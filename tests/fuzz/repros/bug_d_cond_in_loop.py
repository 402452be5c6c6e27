# Bug D (seeds 182, 209): inside jax.remat, a loop whose body has a lax.cond
# with a branch that reads an external ref fails under jax.vjp with
# "NotImplementedError: State effect not supported in cond partial-eval"
# (from remat_partial_eval -> partial_eval_jaxpr_custom); the program without
# remat works.
import numpy as np, jax, jax.numpy as jnp
from jax import lax
import jax_remat_refs

def run(remat):
  r = jax.new_ref(np.float32(2.0))
  def blk(x):
    def body(i, c):
      lax.cond(x > 0, lambda: r[...], lambda: x)   # result unused
      return c
    lax.fori_loop(0, 1, body, ())
    return jnp.sin(x)
  g = jax.checkpoint(blk) if remat else blk
  try:
    out, f_vjp = jax.vjp(g, np.float32(0.5))
    return float(out), float(f_vjp(np.float32(1.0))[0]), float(r[...])
  except Exception as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"

print("jax", jax.__version__, "| no remat:", run(False), "| remat:", run(True))
