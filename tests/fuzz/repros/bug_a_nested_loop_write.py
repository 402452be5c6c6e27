# Bug A (seeds 219, 273, 291, 369, 383, ...): inside jax.remat, a write to an
# external ref is lost under jax.vjp when it sits
#   * in a fori_loop nested in a fori_loop (jax 0.10.2 only), or
#   * in a nested remat without used outputs inside a fori_loop (both versions;
#     giving the nested remat an output that is used hides it).
# The ref keeps its old value (and later reads in the program see it).
import numpy as np, jax, jax.numpy as jnp
from jax import lax
import jax_remat_refs

def run(remat, variant):
  r = jax.new_ref(np.zeros((), np.float32))
  ck = jax.checkpoint if remat else (lambda f: f)
  def blk(x):
    def write(c):
      r[...] = lax.stop_gradient(x)
      return c
    def outer(i, c):
      if variant == "fori-fori":
        return lax.fori_loop(0, 1, lambda j, c: write(c), c)
      if variant == "fori-remat":
        return ck(write)(c)
      return write(c)
    lax.fori_loop(0, 1, outer, ())
    return jnp.sin(x)
  out, f_vjp = jax.vjp(ck(blk), np.float32(0.5))
  g, = f_vjp(np.float32(1.0))
  return float(out), float(g), float(r[...])

print("jax", jax.__version__)
for v in ("fori", "fori-fori", "fori-remat"):
  print(f"{v:11s} no remat (out, grad, r):", run(False, v), " remat:", run(True, v))
