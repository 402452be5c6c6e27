# Upstream JAX 0.10.2 (not ref-related; fixed by 0.12; seed 306): a remat
# whose outputs are unused and whose only effect is a jax.debug.callback is
# dropped when it is staged out (under jit, or in a loop body), so the
# callback does not fire in the forward pass; without remat it fires.
# remat_dce's effects test is inverted in 0.10.2. Same with
# jax_remat_refs.upstream_behavior(). The fuzzer gives every callback an
# operand, which avoids the jit case but not the loop case.
import jax
from jax import lax
import jax_remat_refs

calls = [0]
def cb(*args):
  calls[0] += 1

def jit_case(remat):
  def blk(x):
    jax.debug.callback(cb)
    return ()
  return jax.jit(jax.remat(blk) if remat else blk)

def loop_case(remat):
  ck = jax.remat if remat else (lambda f: f)
  def f(x):
    def body(i, c):
      def blk():
        jax.debug.callback(cb, x)
        return x * 2.0
      ck(blk)()            # output unused
      return c
    return lax.fori_loop(0, 2, body, x)
  return f

for name, make in (("jit(remat(f))", jit_case), ("remat in fori_loop", loop_case)):
  counts = []
  for remat in (False, True):
    calls[0] = 0
    make(remat)(1.0)
    jax.effects_barrier()
    counts.append(calls[0])
  print("jax", jax.__version__, name, "callbacks fired: no remat", counts[0],
        "remat", counts[1])
