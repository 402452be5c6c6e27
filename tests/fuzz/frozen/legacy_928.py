"""Fuzz program (generator 1 before motifs, seed 928; frozen): remat must be transparent.

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


def build(remat, r3):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, ri4):
    def blk5(x2, r3, ri4):
      q6 = jax.new_ref(x2)
      def loop7(i8, carry):
        def blk9(q6):
          v10 = x2 + x2
          v11 = jnp.sin(v10 * v10)
          q6[i8 % 3] = jnp.sin(v10[1])
          return ()
        blk9 = ckpt(blk9, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
        blk9(q6)
        v12 = jnp.tanh(jnp.dot(x2, x2))
        return ()
      lax.fori_loop(0, 3, loop7, ())
      v13 = ri4[...].astype(jnp.float32)
      jax.debug.callback(_cb, v13)
      v14 = q6[2:3]
      return (v13, v14)
    blk5 = ckpt(blk5, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    (v15, v16) = blk5(x2, r3, ri4)
    return (v16,)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array([0.158, -0.514, 0.204], np.float32)),
      'ri4': jax.new_ref(np.array(2, np.int32)),
  }


XS = (np.array([-0.801, -0.615, 0.097], np.float32), )
CLOSED_REFS = ('r3',)
ARG_REFS = ('ri4',)
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
