"""Fuzz program (generator 1 before motifs, seed 5859; frozen): remat must be transparent.

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

  def f(x2, x4):
    v6 = r5[...]
    def blk7(x4, x2, v6):
      v8 = lax.stop_gradient(x4)
      q9 = jax.new_ref(jnp.broadcast_to(x2, (3,)))
      def blk10(v6, r5):
        q11 = jax.new_ref(x2)
        v12 = q11[...]
        return (x4, v12)
      blk10 = jax.jit(blk10)
      blk10 = ckpt(blk10, prevent_cse=False)
      (v13, v14) = blk10(v6, r5)
      q9[1] = jnp.tanh(v14)
      return (v14,)
    blk7 = ckpt(blk7, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=True)
    (v15,) = blk7(x4, x2, v6)
    v16 = x4 * x2
    return (v15, v6, v16)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array(1.048, np.float32)),
  }


XS = (np.array(-0.328, np.float32), np.array(-0.321, np.float32), )
CLOSED_REFS = ('r5',)
ARG_REFS = ()
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
