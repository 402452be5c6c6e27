"""Fuzz program (generator 1 before motifs, seed 182; frozen): remat must be transparent.

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


def build(remat, r3):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, r4, r5):
    def blk6(r5):
      r5[1:2] = lax.stop_gradient(jnp.tanh(jnp.broadcast_to(jnp.sum(x2), (1,))))
      def blk7(x2, r4, r5, r3):
        v8 = x2 - x2
        v9 = jnp.sum(x2)
        def loop10(i11, carry):
          def tbr12(ops):
            v13 = r3[...]
            return (v13,)
          def fbr12(ops):
            v14 = jnp.tanh(v8 * v8)
            return (x2[1],)
          (v15,) = lax.cond(jnp.sum(x2) > 0, tbr12, fbr12, ())
          return ()
        lax.fori_loop(0, 1, loop10, ())
        return (v9,)
      blk7 = ckpt(blk7, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=True)
      (v16,) = blk7(x2, r4, r5, r3)
      v17 = lax.stop_gradient(v16)
      return ()
    blk6 = ckpt(blk6, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
    blk6(r5)
    return (x2,)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array(0.385, np.float32)),
      'r4': jax.new_ref(np.array([1.303, -1.22, -0.86], np.float32)),
      'r5': jax.new_ref(np.array([0.579, -1.206, 0.211], np.float32)),
  }


XS = (np.array([-0.454, -0.648, 0.854], np.float32), )
CLOSED_REFS = ('r3',)
ARG_REFS = ('r4', 'r5')
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
