"""Fuzz program (generator 1 before motifs, seed 5403; frozen): remat must be transparent.

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


def build(remat, ri9):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r5, r6, r7, r8):
    def blk10(x2, r5, r8, r6, r7, ri9):
      def loop11(i12, carry):
        (x4, x2) = carry
        q13 = jax.new_ref(x2)
        def blk14(x2, ri9, r6, r5, r7, r8, q13):
          v15 = jnp.cos(x4)
          v16 = jnp.sin(v15)
          v17 = jnp.tanh(jnp.dot(x2, x4 * jnp.ones(4, jnp.float32)))
          v18 = x2 * v17 * jnp.ones(4, jnp.float32)
          return (v16, v17)
        blk14 = ckpt(blk14, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=False)
        (v19, v20) = blk14(x2, ri9, r6, r5, r7, r8, q13)
        return (jnp.sin(x4 + v19), jnp.tanh(x2))
      (v21, v22) = lax.fori_loop(0, 1, loop11, (x4, x2))
      v23 = ri9[...].astype(jnp.float32)
      v24 = jnp.cos(v21)
      r6[ri9[...] % 4] += lax.stop_gradient(v24)
      return (v23, v23)
    blk10 = ckpt(blk10, prevent_cse=False)
    (v25, v26) = blk10(x2, r5, r8, r6, r7, ri9)
    return (v26,)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array([-0.401, 0.136, 0.839, -0.854], np.float32)),
      'r6': jax.new_ref(np.array([-0.261, 0.75, -0.122, -1.182], np.float32)),
      'r7': jax.new_ref(np.array([0.775, -0.38, 0.143, 0.169], np.float32)),
      'r8': jax.new_ref(np.array([-0.296, -0.191, 1.093, 1.379], np.float32)),
      'ri9': jax.new_ref(np.array(0, np.int32)),
  }


XS = (np.array([-0.142, 1.064, -0.0, 0.819], np.float32), np.array(-1.486, np.float32), )
CLOSED_REFS = ('ri9',)
ARG_REFS = ('r5', 'r6', 'r7', 'r8')
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
