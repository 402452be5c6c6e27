"""Fuzz program (generator 1 before motifs, seed 9608; frozen): remat must be transparent.

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


def build(remat, r5, ri8):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r6, r7):
    def blk9(x2, r6, r5):
      v10 = jnp.where(x2 > 0, x2, x2)
      def loop11(i12, carry):
        (x2, x4) = carry
        def scan13(carry, x14):
          (v10, x2) = carry
          r5[...] += lax.stop_gradient(x4)
          v15 = jnp.dot(x2, jnp.broadcast_to(x14, (2,)))
          return (jnp.tanh(x14 * jnp.ones(2, jnp.float32)), jnp.tanh(x2 + jnp.broadcast_to(v15, (2,)))), x14
        (v16, v17), v18 = lax.scan(scan13, (v10, x2), v10)
        v19 = r7[0:2]
        q20 = jax.new_ref(v16)
        def blk21(r6, ri8):
          v23 = checkpoint_name(v10, 'n22')
          v24 = jnp.cos(v23)
          v26 = checkpoint_name(v19, 'n25')
          v27 = r7[i12 % 2]
          q20[i12 % 2] += lax.stop_gradient(jnp.tanh(jnp.sum(v19)))
          return (v26, v26)
        blk21 = ckpt(blk21, policy=jax.checkpoint_policies.save_only_these_names('n22', 'n25'), prevent_cse=False)
        (v28, v29) = blk21(r6, ri8)
        return (jnp.sin(x2 + v29), jnp.tanh(jnp.sum(v16)))
      (v30, v31) = lax.fori_loop(0, 2, loop11, (x2, x4))
      return (v30,)
    blk9 = jax.jit(blk9)
    blk9 = ckpt(blk9, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
    (v32,) = blk9(x2, r6, r5)
    return (v32,)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array(1.073, np.float32)),
      'r6': jax.new_ref(np.array(0.165, np.float32)),
      'r7': jax.new_ref(np.array([-1.224, -0.838], np.float32)),
      'ri8': jax.new_ref(np.array(4, np.int32)),
  }


XS = (np.array([1.129, -1.331], np.float32), np.array(-1.362, np.float32), )
CLOSED_REFS = ('r5', 'ri8')
ARG_REFS = ('r6', 'r7')
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
