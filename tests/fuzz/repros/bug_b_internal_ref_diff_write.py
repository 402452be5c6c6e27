# Bug B (seeds 138, 178 of the first generator version): inside jax.remat, a
# ref created from a value WITHOUT a gradient and then written with a value
# WITH a gradient fails under jax.vjp (0.10.2: KeyError in partial eval's
# eval_jaxpr; 0.12: NotImplementedError "Mutating a reference with
# unknown/differentiated values is not supported"). Upstream remat fails the
# same way; the program without remat works. The generator now follows the
# stop_gradient rule for such refs too, so the fuzzer no longer produces it.
import numpy as np, jax, jax.numpy as jnp
import jax_remat_refs

def run(remat):
  def blk(x):
    q = jax.new_ref(jnp.float32(0.3))
    q[...] = jnp.sin(x)
    return q[...] * x
  g = jax.checkpoint(blk) if remat else blk
  try:
    out, f_vjp = jax.vjp(g, np.float32(0.5))
    return float(out), float(f_vjp(np.float32(1.0))[0])
  except Exception as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"

print("jax", jax.__version__, "| no remat:", run(False), "| remat:", run(True))
with jax_remat_refs.upstream_behavior():
  print("   upstream remat:", run(True))
