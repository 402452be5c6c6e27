"""Fuzz program (generator 1 before motifs, seed 336; frozen): remat must be transparent.

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

  def f(x2, r4):
    v5 = x2 * x2
    jax.debug.callback(_cb, x2)
    v6 = jnp.sin(jnp.dot(v5, x2))
    v7 = r4[...]
    q8 = jax.new_ref(jnp.tanh(jnp.sum(v5)))
    v9 = jnp.where(jnp.broadcast_to(v7, (2,)) > 0, v5, v7 * jnp.ones(2, jnp.float32))
    q8[...] = jnp.tanh(v7)
    v10 = jnp.tanh(jnp.dot(v5, jnp.broadcast_to(v7, (2,))))
    v11 = jnp.sin(x2)
    def blk12(v9, r4, r3, q8):
      jax.ref.addupdate(q8, ..., jnp.sin(v7))
      v13 = q8[...]
      q14 = jax.new_ref(jnp.tanh(jnp.broadcast_to(v13, (2,))))
      return (v13,)
    blk12 = ckpt(blk12, prevent_cse=True)
    (v15,) = blk12(v9, r4, r3, q8)
    q16 = jax.new_ref(jnp.tanh(jnp.broadcast_to(v7, (2,))))
    v17 = jnp.cos(v7)
    v18 = v7 * v6
    return (v17, v18, v11)
  return jax.jit(f)


def make_refs():
  return {
      'r3': jax.new_ref(np.array([0.661, -0.018], np.float32)),
      'r4': jax.new_ref(np.array(0.781, np.float32)),
  }


XS = (np.array([0.984, 0.722], np.float32), )
CLOSED_REFS = ('r3',)
ARG_REFS = ('r4',)
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
