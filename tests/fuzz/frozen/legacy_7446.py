"""Fuzz program (generator 1 before motifs, seed 7446; frozen): remat must be transparent.

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


def build(remat, r7, ri8):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, x6):
    v9 = x2 + x2
    v11 = checkpoint_name(v9, 'n10')
    r7[...] = lax.stop_gradient(x4)
    r7[...] = lax.stop_gradient(x6)
    v12 = x4 - x6
    q13 = jax.new_ref(jnp.tanh(v11[3]))
    r7[...] += lax.stop_gradient(x6)
    v14 = jnp.sin(jnp.dot(x2, v9))
    q13[...] = v14
    def scan15(carry, x16):
      (x2, v12) = carry
      v17 = jnp.tanh(jnp.dot(x2, v12 * jnp.ones(4, jnp.float32)))
      v18 = ri8[x16 % 4].astype(jnp.float32)
      v19 = jnp.sin(v18 * v17)
      return (jnp.tanh(x2 + v12 * jnp.ones(4, jnp.float32)), jnp.sin(v18)), v17
    (v20, v21), v22 = lax.scan(scan15, (x2, v12), jnp.arange(2, dtype=jnp.int32))
    v23 = jnp.tanh(jnp.sum(v9))
    v24 = lax.stop_gradient(x2)
    def blk25(q13):
      def loop26(i27, carry):
        (x4,) = carry
        q28 = jax.new_ref(jnp.tanh(v21 * jnp.ones(4, jnp.float32)))
        v29 = q28[i27 % 4]
        return (jnp.tanh(v29),)
      (v30,) = lax.fori_loop(0, 3, loop26, (x4,))
      return (v30,)
    blk25 = ckpt(blk25, prevent_cse=False)
    blk25 = jax.jit(blk25)
    (v31,) = blk25(q13)
    return (v24, v23, v22)
  return f


def make_refs():
  return {
      'r7': jax.new_ref(np.array(-0.227, np.float32)),
      'ri8': jax.new_ref(np.array([1, 3, 1, 3], np.int32)),
  }


XS = (np.array([0.005, 0.366, -0.647, 1.461], np.float32), np.array(0.424, np.float32), np.array(-0.923, np.float32), )
CLOSED_REFS = ('r7', 'ri8')
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
