# Bug I (seed 928): a remat whose outputs are unused (here: none) writes a
# differentiated value into a differentiated ref (made outside the remat from
# the input): under jax.vjp the outputs are right but the write is missing
# from the gradient. Returning a value from the remat hides it. Upstream
# remat does the same; the program without remat is right.
import numpy as np, jax, jax.numpy as jnp
import jax_remat_refs

def run(remat, with_output):
  ck = jax.checkpoint if remat else (lambda f: f)
  def f(x):
    q = jax.new_ref(x)                    # differentiated ref
    def write(q, x):
      q[1] = jnp.sin(2.0 * x[0])
      return q[0] if with_output else ()
    y = ck(write)(q, x)
    return q[1] + (y if with_output else 0.0)
  out, f_vjp = jax.vjp(f, np.array([0.3, 0.7], np.float32))
  return float(out), f_vjp(np.float32(1.0))[0].tolist()

print("jax", jax.__version__)
for w in (False, True):
  print(f"remat returns a value={w} | no remat (out, grad):", run(False, w),
        "| remat:", run(True, w))
with jax_remat_refs.upstream_behavior():
  print("upstream remat, no output:", run(True, False))
