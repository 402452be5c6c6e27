"""Fuzz program (generator 1 before motifs, seed 2786; frozen): remat must be transparent.

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
    v7 = jnp.tanh(x4)
    v9 = checkpoint_name(x4, 'n8')
    v10 = lax.stop_gradient(x4)
    def blk11(x2, v9):
      v12 = jnp.tanh(v10)
      def scan13(carry, x14):
        (v9, v12) = carry
        r6[0:1] += lax.stop_gradient(jnp.sin(jnp.broadcast_to(jnp.sum(v7), (1,))))
        v15 = v9 * v9
        def blk16(r6, r5):
          r6[1] += lax.stop_gradient(jnp.tanh(jnp.sum(v12)))
          v17 = jnp.dot(v7, v10)
          jax.debug.callback(_cb, v17)
          v18 = r5[...]
          return (v18, v18, x4)
        blk16 = ckpt(blk16, policy=jax.checkpoint_policies.save_only_these_names('n8'), prevent_cse=True)
        (v19, v20, v21) = blk16(r6, r5)
        return (jnp.sin(v9 + v20), jnp.tanh(x2 * jnp.ones(3, jnp.float32))), v15[1]
      (v22, v23), v24 = lax.scan(scan13, (v9, v12), jnp.arange(3, dtype=jnp.int32))
      return ()
    blk11 = ckpt(blk11, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=True)
    blk11(x2, v9)
    return (v7,)
  return f


def make_refs():
  return {
      'r5': jax.new_ref(np.array([-0.676, -0.484, 0.366], np.float32)),
      'r6': jax.new_ref(np.array([1.369, -0.796, 0.257], np.float32)),
  }


XS = (np.array(-0.112, np.float32), np.array([0.418, -0.495, 0.225], np.float32), )
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
