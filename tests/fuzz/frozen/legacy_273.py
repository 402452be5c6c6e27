"""Fuzz program (generator 1 before motifs, seed 273; frozen): remat must be transparent.

Run it: it prints each mode with and without remat; they must agree.
"""
import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
import jax_remat_refs  # noqa: F401  (activates the patch)

CALLS = [0]


def _cb(*args):
  CALLS[0] += 1


def build(remat, r5, r6, r8):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r7):
    def blk9(x2, x4, r5, r6, r7, r8):
      q10 = jax.new_ref(jnp.broadcast_to(x4, (2,)))
      def loop11(i12, carry):
        def blk13(x4, r7):
          r6[...] = lax.stop_gradient(x4)
          return (x2, x2)
        blk13 = ckpt(blk13, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=True)
        (v14, v15) = blk13(x4, r7)
        def blk16(r6, r8):
          v17 = q10[0]
          jax.ref.addupdate(q10, 1, jnp.sin(v17))
          return (v17, v17)
        blk16 = ckpt(blk16, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=True)
        (v18, v19) = blk16(r6, r8)
        def blk20(r5, r7):
          r6[...] = lax.stop_gradient(jnp.tanh(v19))
          v21 = q10[...]
          v22 = r5[1]
          v23 = jnp.tanh(v19 + jnp.sum(v21))
          return ()
        blk20 = ckpt(blk20, prevent_cse=False)
        blk20(r5, r7)
        v24 = x2 * jnp.broadcast_to(v18, (2,))
        return ()
      lax.fori_loop(0, 3, loop11, ())
      v25 = x4 * x4
      return (v25,)
    blk9 = ckpt(blk9, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
    (v26,) = blk9(x2, x4, r5, r6, r7, r8)
    return (v26,)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array([-0.318, 0.583], np.float32)),
      'r6': jax.new_ref(np.array(0.68, np.float32)),
      'r7': jax.new_ref(np.array(0.319, np.float32)),
      'r8': jax.new_ref(np.array(0.236, np.float32)),
  }


XS = (np.array([-1.124, 1.033], np.float32), np.array(0.053, np.float32), )
CLOSED_REFS = ('r5', 'r6', 'r8')
ARG_REFS = ('r7',)
MODES = ('primal', 'vjp')


def _setup(remat):
  refs = make_refs()
  f = build(remat, *[refs[k] for k in CLOSED_REFS])
  return refs, f, [refs[k] for k in ARG_REFS]


def _contents(refs):
  return {k: np.asarray(r[...]) for k, r in refs.items()}


def run_primal(remat):
  refs, f, args = _setup(remat)
  CALLS[0] = 0
  out = f(*XS, *args)
  jax.effects_barrier()
  return dict(out=out, calls=CALLS[0], refs=_contents(refs))


def run_vjp(remat):
  # Callback counts are not compared here: how often a callback fires while
  # partial eval splits a program into forward and backward is JAX's choice
  # (it differs with remat even for programs without refs).
  refs, f, args = _setup(remat)
  out, f_vjp = jax.vjp(lambda *xs: f(*xs, *args), *XS)
  grads = f_vjp(jax.tree.map(jnp.ones_like, out))
  return dict(out=out, grads=grads, refs=_contents(refs))


def run_jit_grad(remat):
  refs, f, args = _setup(remat)

  def loss(*xs):
    return sum(jnp.sum(o) for o in f(*xs, *args))
  grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(XS)))))(*XS)
  jax.effects_barrier()
  return dict(grads=grads, refs=_contents(refs))


RUNNERS = dict(primal=run_primal, vjp=run_vjp, jit_grad=run_jit_grad)


if __name__ == "__main__":
  for mode in MODES:
    for remat in (False, True):
      print(f"{mode:8s} remat={remat!s:5s}", RUNNERS[mode](remat))
