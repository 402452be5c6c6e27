"""Fuzz program (generator 1 before motifs, seed 1189; frozen): remat must be transparent.

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


def build(remat, r5, r6, r7, r8):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, ri9):
    def blk10(x2, x4, r5, r6, r7, r8, ri9):
      def blk11(x2, x4, r7, r5):
        v12 = jnp.cos(x4)
        def loop13(i14, carry):
          (x4,) = carry
          q15 = jax.new_ref(x2)
          q15[i14 % 4] = v12[3]
          return (jnp.sin(x2),)
        (v16,) = lax.fori_loop(0, 1, loop13, (x4,))
        def scan17(carry, x18):
          (v12,) = carry
          v20 = checkpoint_name(v16, 'n19')
          v21 = ri9[3:4].astype(jnp.float32)
          return (jnp.tanh(v12 + jnp.pad(v21, (0, 3))),), jnp.sum(v20)
        (v22,), v23 = lax.scan(scan17, (v12,), None, length=2)
        return (v22, v16)
      blk11 = ckpt(blk11, policy=jax.checkpoint_policies.save_only_these_names('n19'), prevent_cse=True)
      (v24, v25) = blk11(x2, x4, r7, r5)
      r7[1] = lax.stop_gradient(v24[0])
      v26 = jnp.sin(jnp.dot(x4, v25))
      r7[2] += lax.stop_gradient(jnp.tanh(jnp.sum(v24)))
      v27 = v24 + v25
      v28 = jax.ref.swap(r6, slice(2, 3), lax.stop_gradient(jnp.tanh(jnp.broadcast_to(jnp.sum(v24), (1,)))))
      jax.debug.callback(_cb, v27)
      return (v25, v24, v25)
    blk10 = ckpt(blk10, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=True)
    (v29, v30, v31) = blk10(x2, x4, r5, r6, r7, r8, ri9)
    return (v30, v31, v29)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array(0.525, np.float32)),
      'r6': jax.new_ref(np.array([0.94, -1.388, -0.667, -0.194], np.float32)),
      'r7': jax.new_ref(np.array([-0.752, -0.4, 1.42, -1.059], np.float32)),
      'r8': jax.new_ref(np.array(-0.838, np.float32)),
      'ri9': jax.new_ref(np.array([5, 3, 1, 4], np.int32)),
  }


XS = (np.array([-0.211, -0.787, -0.239, -0.775], np.float32), np.array([-0.265, 0.956, 0.623, -0.732], np.float32), )
CLOSED_REFS = ('r5', 'r6', 'r7', 'r8')
ARG_REFS = ('ri9',)
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
