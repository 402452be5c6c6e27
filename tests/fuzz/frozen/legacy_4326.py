"""Fuzz program (generator 1 before motifs, seed 4326; frozen): remat must be transparent.

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


def build(remat, r4):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, r3, r5):
    def blk6(x2, r3, r4, r5):
      v7 = x2 - x2
      r4[...] += lax.stop_gradient(x2)
      v8 = jax.ref.swap(r3, 1, lax.stop_gradient(jnp.tanh(v7)))
      q9 = jax.new_ref(jnp.tanh(v8))
      v10 = v7 + v8
      def scan11(carry, x12):
        (v8,) = carry
        v13 = jnp.tanh(v8)
        v14 = jnp.cos(x2)
        v15 = lax.stop_gradient(v14)
        return (jnp.sin(v14),), v15
      (v16,), v17 = lax.scan(scan11, (v8,), None, length=1)
      r3[...] = lax.stop_gradient(jnp.sin(jnp.broadcast_to(v16, (2,))))
      v18 = jnp.tanh(v8 * v8)
      v19 = jnp.where(v8 * jnp.ones(1, jnp.float32) > 0, v17, jnp.broadcast_to(v8, (1,)))
      q9[...] = jnp.sin(v16)
      return (v7, v18, v7)
    blk6 = jax.jit(blk6)
    blk6 = ckpt(blk6, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
    (v20, v21, v22) = blk6(x2, r3, r4, r5)
    return (v22, v21, v20)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array([0.815, -0.541], np.float32)),
      'r4': jax.new_ref(np.array(-0.117, np.float32)),
      'r5': jax.new_ref(np.array([1.337, 1.123], np.float32)),
  }


XS = (np.array(0.257, np.float32), )
CLOSED_REFS = ('r4',)
ARG_REFS = ('r3', 'r5')
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
