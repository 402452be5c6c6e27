# Bug G (seed 3, jax 0.10.2 only): a remat inside a lax.cond branch that swaps
# into an external ref and runs a debug callback: under jax.vjp XLA's HLO
# verifier rejects the program ("Invalid sharding for instruction ...
# branch_1_fun/remat ... Shape (f32[]) has 1 leaf nodes while this sharding has 3").
import numpy as np, jax, jax.numpy as jnp
from jax import lax
import jax_remat_refs

def run(remat):
  r = jax.new_ref(np.array([0.3, 0.4], np.float32))
  ck = jax.checkpoint if remat else (lambda f: f)
  def f(x):
    y = x * x
    s = lax.stop_gradient(y)
    def tb():
      def blk():
        old = jax.ref.swap(r, 1, lax.stop_gradient(jnp.tanh(y)))
        jax.debug.callback(lambda *a: None, s)
        return jnp.tanh(old * y)
      return ck(blk)()
    lax.cond(y > 0, tb, lambda: s)   # result unused
    return s + jnp.sin(x)
  try:
    out, f_vjp = jax.vjp(f, np.float32(0.5))
    return float(out), float(f_vjp(np.float32(1.0))[0]), r[...].tolist()
  except Exception as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"

print("jax", jax.__version__, "| no remat:", run(False), "| remat:", run(True))
