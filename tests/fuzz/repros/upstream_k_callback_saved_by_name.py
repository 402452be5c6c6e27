# Upstream JAX, both versions (seeds 2622, 2786): a debug callback inside a
# remat whose operand is a value the policy saves by name (checkpoint_name +
# save_only_these_names), not used otherwise. The rematerialization replays
# the callback but JAX's partial-eval rule for debug_callback never passes it
# the saved value: "KeyError: Var(...)" under jax.vjp, also for functions
# without refs. jax_remat_refs registers a fixed rule.
import numpy as np, jax, jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import jax_remat_refs

def run(remat):
  def f(x):
    s = jnp.sin(x)
    def blk():
      jax.debug.callback(lambda v: None, checkpoint_name(s, "s"))
      return x * 2.0
    policy = jax.checkpoint_policies.save_only_these_names("s")
    return (jax.checkpoint(blk, policy=policy) if remat else blk)()
  try:
    out, f_vjp = jax.vjp(f, np.float32(0.5))
    return float(out), float(f_vjp(np.float32(1.0))[0])
  except Exception as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"

print("jax", jax.__version__, "| no remat:", run(False), "| remat:", run(True))
with jax_remat_refs.upstream_behavior():
  print("   upstream remat:", run(True))
