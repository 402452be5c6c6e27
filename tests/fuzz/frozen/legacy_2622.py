"""Fuzz program (generator 1 before motifs, seed 2622; frozen): remat must be transparent.

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


def build(remat, r6, ri8):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r5, r7):
    v9 = jnp.sin(x2)
    q10 = jax.new_ref(jnp.broadcast_to(x2, (3,)))
    v11 = q10[ri8[...] % 3]
    ri8[...] = (ri8[...] * 3 + 1) % 7
    v12 = r6[...]
    v13 = r7[...]
    ri8[...] = (ri8[...] * 3 + 1) % 7
    v15 = checkpoint_name(v13, 'n14')
    r7[...] = lax.stop_gradient(x4)
    def blk16(x2, v13, r6):
      def tbr17(ops):
        (v12,) = ops
        jax.debug.callback(_cb, x4)
        ri8[...] = ri8[...] + 1
        v19 = checkpoint_name(v9, 'n18')
        jax.debug.callback(_cb, v19)
        return (jnp.broadcast_to(v13, (3,)),)
      def fbr17(ops):
        (v12,) = ops
        return (v11 * jnp.ones(3, jnp.float32),)
      (v20,) = lax.cond(v9 > 0, tbr17, fbr17, (v12,))
      return (v20, v20)
    blk16 = ckpt(blk16, policy=jax.checkpoint_policies.save_only_these_names('n14', 'n18'), prevent_cse=False)
    (v21, v22) = blk16(x2, v13, r6)
    return (v15, v22)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array([0.273, -1.084, -1.142], np.float32)),
      'r6': jax.new_ref(np.array(1.093, np.float32)),
      'r7': jax.new_ref(np.array(1.185, np.float32)),
      'ri8': jax.new_ref(np.array(5, np.int32)),
  }


XS = (np.array(0.722, np.float32), np.array(-0.634, np.float32), )
CLOSED_REFS = ('r6', 'ri8')
ARG_REFS = ('r5', 'r7')
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
