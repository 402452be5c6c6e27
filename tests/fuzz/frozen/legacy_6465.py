"""Fuzz program (generator 1 before motifs, seed 6465; frozen): remat must be transparent.

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


def build(remat, r7, r9):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, x6, r8):
    def blk10(x2, x4, x6, r7, r8, r9):
      def scan11(carry, x12):
        (x6, x2) = carry
        q13 = jax.new_ref(x6)
        v14 = r9[...]
        def blk15(x4, x6, r9, r7):
          jax.debug.callback(_cb, x6)
          v16 = q13[...]
          def tbr17(ops):
            (x4,) = ops
            v18 = jnp.where(v14 > 0, x4, x4)
            return (v16,)
          def fbr17(ops):
            (x4,) = ops
            v19 = x4 * jnp.broadcast_to(x6, (4,))
            return (v19[1],)
          (v20,) = lax.cond(x6 > 0, tbr17, fbr17, (x4,))
          jax.ref.addupdate(q13, ..., lax.stop_gradient(jnp.tanh(v20)))
          return (v20, v20)
        blk15 = jax.jit(blk15)
        blk15 = ckpt(blk15, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=False)
        (v21, v22) = blk15(x4, x6, r9, r7)
        return (jnp.sin(v21), jnp.tanh(x2 + jnp.sum(x4))), x6
      (v23, v24), v25 = lax.scan(scan11, (x6, x2), jnp.arange(1, dtype=jnp.int32))
      return (v23, v25, v25)
    blk10 = jax.jit(blk10)
    blk10 = ckpt(blk10, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=False)
    (v26, v27, v28) = blk10(x2, x4, x6, r7, r8, r9)
    return (v28, v27)
  return f


def make_refs():
  return {
      'r7': jax.new_ref(np.array([-1.176, 0.317, 0.933, 0.884], np.float32)),
      'r8': jax.new_ref(np.array([-0.043, 0.867, 1.209, 1.055], np.float32)),
      'r9': jax.new_ref(np.array([-0.709, 1.047, -1.211, -1.015], np.float32)),
  }


XS = (np.array(0.519, np.float32), np.array([-0.39, 1.087, 0.337, -0.03], np.float32), np.array(0.831, np.float32), )
CLOSED_REFS = ('r7', 'r9')
ARG_REFS = ('r8',)
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
