# Bug F (seed 281): inside jax.remat, a fori_loop body that swaps into an
# external ref and creates a ref from the swapped-out value fails under jax.vjp:
# "ValueError: function body traced for fori_loop returned a mutable array
# reference ... but mutable array references cannot be returned."
import numpy as np, jax, jax.numpy as jnp
from jax import lax
import jax_remat_refs

def run(remat):
  r = jax.new_ref(np.array([0.3, 0.4], np.float32))
  def blk(x):
    def body(i, c):
      old = jax.ref.swap(r, 0, lax.stop_gradient(x))
      q = jax.new_ref(jnp.broadcast_to(old, (2,)))
      q[i % 2]       # read, result unused
      return c
    lax.fori_loop(0, 1, body, ())
    return jnp.sin(x)
  g = jax.checkpoint(blk) if remat else blk
  try:
    out, f_vjp = jax.vjp(g, np.float32(0.5))
    return float(out), float(f_vjp(np.float32(1.0))[0]), r[...].tolist()
  except Exception as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"

print("jax", jax.__version__, "| no remat:", run(False), "| remat:", run(True))
