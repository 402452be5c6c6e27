"""Fuzz program (generator 1 before motifs, seed 5308; frozen): remat must be transparent.

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


def build(remat):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r5):
    r5[1] = lax.stop_gradient(x2)
    r5[...] += lax.stop_gradient(x4 * jnp.ones(2, jnp.float32))
    r5[0:2] += lax.stop_gradient(jnp.broadcast_to(x4, (2,)))
    v6 = x2 * x2
    v7 = jnp.cos(v6)
    jax.debug.callback(_cb, x2)
    def scan8(carry, x9):
      (x4,) = carry
      q10 = jax.new_ref(jnp.broadcast_to(x2, (2,)))
      def tbr11(ops):
        def blk12(x4, q10, r5):
          def blk13(v7, x2):
            def blk14(x4, v7, x2, q10):
              q15 = jax.new_ref(x4)
              return (x2, x2, v7)
            blk14 = ckpt(blk14, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=True)
            (v16, v17, v18) = blk14(x4, v7, x2, q10)
            v20 = checkpoint_name(v16, 'n19')
            return (v18, v20)
          blk13 = ckpt(blk13, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=False)
          (v21, v22) = blk13(v7, x2)
          v23 = q10[1]
          return ()
        blk12 = ckpt(blk12, policy=jax.checkpoint_policies.save_only_these_names('n19'), prevent_cse=False)
        blk12(x4, q10, r5)
        return (jnp.broadcast_to(x2, (2,)), x2)
      def fbr11(ops):
        return (jnp.broadcast_to(x2, (2,)), v7)
      (v24, v25) = lax.cond(x4 > 0, tbr11, fbr11, ())
      return (jnp.tanh(x4 + v25),), v25
    (v26,), v27 = lax.scan(scan8, (x4,), None, length=3)
    return (v27, v26)
  return jax.jit(f)


def make_refs():
  return {
      'r5': jax.new_ref(np.array([0.041, -0.664], np.float32)),
  }


XS = (np.array(0.162, np.float32), np.array(-0.931, np.float32), )
CLOSED_REFS = ()
ARG_REFS = ('r5',)
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
