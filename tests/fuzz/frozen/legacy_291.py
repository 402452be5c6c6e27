"""Fuzz program (generator 1 before motifs, seed 291; frozen): remat must be transparent.

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


def build(remat, r6):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, x4, r5):
    def blk7(x2, x4, r5, r6):
      def loop8(i9, carry):
        (x2, x4) = carry
        v10 = x2 + x2
        v11 = jnp.sum(x2)
        v12 = jnp.sin(v11)
        def scan13(carry, x14):
          (x2, x4) = carry
          r5[2:3] = lax.stop_gradient(jnp.sin(jnp.broadcast_to(jnp.sum(v10), (1,))))
          v15 = jnp.sin(jnp.sum(v10))
          v16 = r6[...]
          v17 = jnp.sum(x4)
          return (jnp.tanh(x2 + v16 * jnp.ones(4, jnp.float32)), jnp.sin(x4 + v15 * jnp.ones(4, jnp.float32))), v15
        (v18, v19), v20 = lax.scan(scan13, (x2, x4), jnp.arange(1, dtype=jnp.int32))
        return (jnp.tanh(x2 + v11 * jnp.ones(4, jnp.float32)), jnp.tanh(v12 * jnp.ones(4, jnp.float32)))
      (v21, v22) = lax.fori_loop(0, 2, loop8, (x2, x4))
      jax.debug.callback(_cb, v22)
      v23 = jnp.where(v21 > 0, v22, v21)
      return (v23, v22, v21)
    blk7 = ckpt(blk7, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    (v24, v25, v26) = blk7(x2, x4, r5, r6)
    return (v25, v24)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array([-1.29, 1.446, -1.255, -0.151], np.float32)),
      'r6': jax.new_ref(np.array(-1.013, np.float32)),
  }


XS = (np.array([-1.148, 0.231, 0.738, -0.889], np.float32), np.array([-0.494, -1.173, 0.568, 0.744], np.float32), )
CLOSED_REFS = ('r6',)
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
