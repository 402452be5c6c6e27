"""Fuzz program (generator 1 before motifs, seed 1085; frozen): remat must be transparent.

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


def build(remat, r10):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, x6, r7, r8, r9):
    def blk11(x2, x4, x6, r7, r8, r9, r10):
      def loop12(i13, carry):
        (x6,) = carry
        def blk14(r7, r10, r9, r8):
          v15 = jnp.cos(x4)
          v16 = v15 - v15
          r8[...] = lax.stop_gradient(v16)
          v17 = jnp.where(v16 > 0, v16, v15)
          return (v17, v17, v15)
        blk14 = ckpt(blk14, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
        (v18, v19, v20) = blk14(r7, r10, r9, r8)
        return (jnp.sin(x6 + v19),)
      (v21,) = lax.fori_loop(0, 3, loop12, (x6,))
      q22 = jax.new_ref(jnp.broadcast_to(v21, (4,)))
      v23 = r10[3:4]
      r9[0] = lax.stop_gradient(x2)
      v25 = checkpoint_name(x4, 'n24')
      v26 = jnp.sin(v21)
      v27 = jnp.sin(v21)
      v28 = v25 + v26
      v29 = jax.ref.swap(r10, 2, lax.stop_gradient(jnp.tanh(jnp.sum(v23))))
      return (v25, v28, v21)
    blk11 = ckpt(blk11, policy=jax.checkpoint_policies.everything_saveable, prevent_cse=True)
    (v30, v31, v32) = blk11(x2, x4, x6, r7, r8, r9, r10)
    return (v30, v31)
  return f


def make_refs():
  return {
      'r7': jax.new_ref(np.array([-0.159, -0.792, -1.143, 0.659], np.float32)),
      'r8': jax.new_ref(np.array(-0.925, np.float32)),
      'r9': jax.new_ref(np.array([0.737, -0.62, 1.156, -1.312], np.float32)),
      'r10': jax.new_ref(np.array([1.006, 0.82, 0.907, -1.452], np.float32)),
  }


XS = (np.array(-1.196, np.float32), np.array(-1.289, np.float32), np.array(-1.495, np.float32), )
CLOSED_REFS = ('r10',)
ARG_REFS = ('r7', 'r8', 'r9')
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
