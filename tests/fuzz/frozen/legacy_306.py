"""Fuzz program (generator 1 before motifs, seed 306; frozen): remat must be transparent.

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


def build(remat, r5):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4):
    def loop6(i7, carry):
      def loop8(i9, carry):
        def blk10(x4, r5):
          jax.debug.callback(_cb, x2)
          v12 = checkpoint_name(x4, 'n11')
          v13 = jnp.cos(x2)
          v14 = lax.stop_gradient(v12)
          return (v14,)
        blk10 = ckpt(blk10, policy=jax.checkpoint_policies.everything_saveable, prevent_cse=True)
        (v15,) = blk10(x4, r5)
        v16 = jnp.sin(v15)
        v17 = r5[0]
        return ()
      lax.fori_loop(0, 1, loop8, ())
      v19 = checkpoint_name(x2, 'n18')
      q20 = jax.new_ref(v19)
      return ()
    lax.fori_loop(0, 2, loop6, ())
    v21 = x4 + jnp.broadcast_to(x2, (3,))
    return (v21,)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array([-1.278, 1.097, 0.231], np.float32)),
  }


XS = (np.array(-0.266, np.float32), np.array([0.517, 0.989, 0.17], np.float32), )
CLOSED_REFS = ('r5',)
ARG_REFS = ()
MODES = ('primal', 'vjp', 'jit_grad')


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
