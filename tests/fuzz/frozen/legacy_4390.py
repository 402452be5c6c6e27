"""Fuzz program (generator 1 before motifs, seed 4390; frozen): remat must be transparent.

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

  def f(x2, x4, r6):
    def blk7(x2, x4, r5, r6):
      v8 = jnp.tanh(x2)
      v9 = r5[1:2]
      def blk10(x2, x4, r5, r6):
        v11 = jnp.cos(x4)
        def loop12(i13, carry):
          (x4,) = carry
          v14 = jnp.dot(x2, x4)
          q15 = jax.new_ref(jnp.tanh(v14 * jnp.ones(2, jnp.float32)))
          return (jnp.tanh(x4 + v14 * jnp.ones(2, jnp.float32)),)
        (v16,) = lax.fori_loop(0, 1, loop12, (x4,))
        return (v16,)
      blk10 = ckpt(blk10, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
      (v17,) = blk10(x2, x4, r5, r6)
      def scan18(carry, x19):
        (v9,) = carry
        v20 = jnp.tanh(x2)
        def blk21(v8, r5):
          q22 = jax.new_ref(jnp.sum(v20))
          v23 = jax.ref.swap(r5, x19 % 2, lax.stop_gradient(jnp.tanh(jnp.sum(v9))))
          q22[...] = lax.stop_gradient(jnp.sin(v23))
          v24 = jnp.cos(x4)
          return (v24,)
        blk21 = ckpt(blk21, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=False)
        (v25,) = blk21(v8, r5)
        return (jnp.sin(jnp.broadcast_to(jnp.sum(v20), (1,))),), jnp.sum(v25)
      (v26,), v27 = lax.scan(scan18, (v9,), jnp.arange(2, dtype=jnp.int32))
      v28 = r5[...]
      v29 = v26 + v26
      return (v29, v29, v17)
    blk7 = ckpt(blk7, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    (v30, v31, v32) = blk7(x2, x4, r5, r6)
    return (v32, v31)
  return jax.jit(f)


def make_refs():
  return {
      'r5': jax.new_ref(np.array([0.619, 0.556], np.float32)),
      'r6': jax.new_ref(np.array(0.843, np.float32)),
  }


XS = (np.array([-0.73, -0.296], np.float32), np.array([-1.231, -1.406], np.float32), )
CLOSED_REFS = ('r5',)
ARG_REFS = ('r6',)
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
