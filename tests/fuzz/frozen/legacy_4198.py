"""Fuzz program (generator 1 before motifs, seed 4198; frozen): remat must be transparent.

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


def build(remat, r5, r6):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r7):
    v8 = x4 + x2
    def blk9(x2, x4, r7):
      q10 = jax.new_ref(jnp.tanh(v8))
      v11 = jnp.cos(x4)
      v12 = jnp.sum(x2)
      def tbr13(ops):
        (v11,) = ops
        v14 = q10[2:3]
        return ()
      def fbr13(ops):
        (v11,) = ops
        q10[1:3] += jnp.sin(v12 * jnp.ones(2, jnp.float32))
        v15 = jnp.sin(v12)
        return ()
      lax.cond(jnp.sum(x2) > 0, tbr13, fbr13, (v11,))
      v16 = jnp.sin(v12)
      return (v12, v12)
    blk9 = ckpt(blk9, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=True)
    (v17, v18) = blk9(x2, x4, r7)
    def blk19(x4):
      v20 = r7[...]
      jax.debug.callback(_cb, v20)
      v21 = lax.stop_gradient(v17)
      v22 = jnp.sin(jnp.dot(x2, jnp.broadcast_to(v21, (3,))))
      return (v20, x2)
    blk19 = ckpt(blk19, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=False)
    (v23, v24) = blk19(x4)
    return (v17, v23, v18)
  return jax.jit(f)


def make_refs():
  return {
      'r5': jax.new_ref(np.array(-1.022, np.float32)),
      'r6': jax.new_ref(np.array([1.071, -0.027, -1.371], np.float32)),
      'r7': jax.new_ref(np.array(-1.081, np.float32)),
  }


XS = (np.array([-0.803, 0.565, 0.433], np.float32), np.array([1.276, -0.446, 1.027], np.float32), )
CLOSED_REFS = ('r5', 'r6')
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
