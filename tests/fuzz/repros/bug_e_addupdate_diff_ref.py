# Bug E (seeds 186, 336, 454; jax 0.10.2): a ref made from a differentiated
# value, written (q[...] = ...) with a value without gradient before a remat
# that addupdates a value without gradient into it and reads it back. Under
# jax.vjp the remat version fails in the backward pass:
#   AttributeError: 'jaxlib._jax.ArrayImpl' object has no attribute 'accum'
#   (jax/_src/state/primitives.py _swap_transpose_fancy)
# Without the remat it works. (Earlier core versions failed with
# "module 'jax._src.core' has no attribute 'get_aval'" in
# _rewrite.lift_constant_tangent_writes; seeds 186/454 pass since that fix.)
import numpy as np, jax, jax.numpy as jnp
import jax_remat_refs

def run(remat):
  r = jax.new_ref(np.float32(0.7))
  def f(x):
    c = r[...]
    q = jax.new_ref(jnp.tanh(x * x))      # differentiated ref
    q[...] = jnp.tanh(c)                  # no gradient
    def blk():
      jax.ref.addupdate(q, ..., jnp.sin(c))
      return (q[...],)
    (jax.checkpoint(blk) if remat else blk)()
    return jnp.sin(x)
  try:
    out, f_vjp = jax.vjp(f, np.float32(0.5))
    return float(out), float(f_vjp(np.float32(1.0))[0])
  except Exception as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"

print("jax", jax.__version__, "| no remat:", run(False), "| remat:", run(True))
with jax_remat_refs.upstream_behavior():
  print("   upstream remat:", run(True))
