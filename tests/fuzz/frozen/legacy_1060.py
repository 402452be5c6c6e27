"""Fuzz program (generator 1 before motifs, seed 1060; frozen): remat must be transparent.

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

  def f(x2, r3, ri4):
    v5 = jnp.cos(x2)
    def loop6(i7, carry):
      (v5, x2) = carry
      r3[...] += lax.stop_gradient(x2 * jnp.ones(2, jnp.float32))
      v8 = r3[...]
      r3[i7 % 2] += lax.stop_gradient(jnp.sin(v8[1]))
      return (jnp.tanh(v8[0]), jnp.tanh(x2))
    (v9, v10) = lax.fori_loop(0, 3, loop6, (v5, x2))
    v11 = v10 * v9
    v12 = r3[0:1]
    def blk13(v12, r3, ri4):
      def loop14(i15, carry):
        q16 = jax.new_ref(jnp.tanh(jnp.pad(v12, (0, 1))))
        v17 = x2 * v12[0]
        q16[ri4[...] % 2] += lax.stop_gradient(v5)
        return ()
      lax.fori_loop(0, 2, loop14, ())
      return (v11, v11)
    blk13 = ckpt(blk13, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    (v18, v19) = blk13(v12, r3, ri4)
    return (v18,)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array([-1.013, -0.618], np.float32)),
      'ri4': jax.new_ref(np.array(2, np.int32)),
  }


XS = (np.array(-1.076, np.float32), )
CLOSED_REFS = ()
ARG_REFS = ('r3', 'ri4')
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
