"""Fuzz program (generator 1 before motifs, seed 219; frozen): remat must be transparent.

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


def build(remat, r7, r9):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, x6, r8, r10, ri11):
    def blk12(x2, x4, x6, r7, r8, r9, r10, ri11):
      def loop13(i14, carry):
        (x2,) = carry
        def loop15(i16, carry):
          v17 = jnp.sin(jnp.dot(x6, jnp.broadcast_to(x4, (4,))))
          def blk18():
            r7[0:4] = lax.stop_gradient(x4 * jnp.ones(4, jnp.float32))
            r10[...] += lax.stop_gradient(x6[3])
            return (x4,)
          blk18 = ckpt(blk18, policy=jax.checkpoint_policies.everything_saveable, prevent_cse=False)
          (v19,) = blk18()
          v20 = jnp.cos(v17)
          v21 = ri11[...].astype(jnp.float32)
          return ()
        lax.fori_loop(0, 2, loop15, ())
        return (jnp.tanh(x4),)
      (v22,) = lax.fori_loop(0, 1, loop13, (x2,))
      v23 = r10[...]
      v24 = jnp.tanh(v23 * jnp.sum(x6))
      r7[...] = lax.stop_gradient(v24 * jnp.ones(4, jnp.float32))
      r8[ri11[2] % 4] = lax.stop_gradient(v24)
      v25 = jnp.sin(v24)
      v26 = v23 * v22
      return (v23, v26, v24)
    blk12 = ckpt(blk12, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=True)
    (v27, v28, v29) = blk12(x2, x4, x6, r7, r8, r9, r10, ri11)
    return (v29,)
  return f


def make_refs():
  return {
      'r7': jax.new_ref(np.array([0.362, 1.386, -1.105, -0.695], np.float32)),
      'r8': jax.new_ref(np.array([0.912, 1.353, -1.285, 0.066], np.float32)),
      'r9': jax.new_ref(np.array([-0.536, 0.618, 0.692, -0.396], np.float32)),
      'r10': jax.new_ref(np.array(0.933, np.float32)),
      'ri11': jax.new_ref(np.array([4, 3, 5, 0], np.int32)),
  }


XS = (np.array(-0.514, np.float32), np.array(0.844, np.float32), np.array([-0.481, 1.437, -1.379, -1.33], np.float32), )
CLOSED_REFS = ('r7', 'r9')
ARG_REFS = ('r8', 'r10', 'ri11')
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
