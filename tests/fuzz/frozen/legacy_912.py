"""Fuzz program (generator 1 before motifs, seed 912; frozen): remat must be transparent.

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

  def f(x2, r3):
    jax.debug.callback(_cb, x2)
    def scan5(carry, x6):
      (x2,) = carry
      def blk7():
        v8 = x2 * x2
        def blk9(x2):
          v10 = x2 * x2
          def loop11(i12, carry):
            (v10, v8) = carry
            v13 = jnp.sin(x2)
            q14 = jax.new_ref(jnp.tanh(jnp.sum(v13)))
            q14[...] = jnp.sin(v10[3])
            return (jnp.sin(v10 + v13), jnp.tanh(v8 + v13))
          (v15, v16) = lax.fori_loop(0, 2, loop11, (v10, v8))
          r3[1] = lax.stop_gradient(jnp.tanh(jnp.sum(v15)))
          v17 = v10 * v15
          v18 = r4[...]
          return (v17,)
        blk9 = ckpt(blk9, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=True)
        (v19,) = blk9(x2)
        v20 = r4[...]
        return (v19,)
      blk7 = ckpt(blk7, policy=jax.checkpoint_policies.everything_saveable, prevent_cse=True)
      (v21,) = blk7()
      jax.debug.callback(_cb, v21)
      v22 = lax.stop_gradient(v21)
      return (jnp.sin(x2 + v22),), v21[2]
    (v23,), v24 = lax.scan(scan5, (x2,), None, length=1)
    return (v24,)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array([0.722, 1.348, -0.042, -1.213], np.float32)),
      'r4': jax.new_ref(np.array(-1.482, np.float32)),
  }


XS = (np.array([0.419, 0.096, -1.423, 0.895], np.float32), )
CLOSED_REFS = ('r4',)
ARG_REFS = ('r3',)
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
