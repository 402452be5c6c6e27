"""Fuzz program (generator 1 before motifs, seed 1380; frozen): remat must be transparent.

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


def build(remat, r3, r4, r5, r6, ri7):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2):
    def blk8():
      v9 = jnp.sin(x2)
      v10 = v9 * v9
      v11 = r4[0:3]
      v12 = jnp.sin(x2)
      v14 = checkpoint_name(x2, 'n13')
      return (v10,)
    blk8 = ckpt(blk8, policy=jax.checkpoint_policies.everything_saveable, prevent_cse=True)
    blk8 = jax.jit(blk8)
    (v15,) = blk8()
    def scan16(carry, x17):
      (v15,) = carry
      jax.debug.callback(_cb, x2)
      def blk18(x2, r5, ri7, r3, r4):
        def blk19(v15, x2, r4, r6, ri7, r3, r5):
          v20 = r6[x17 % 4]
          ri7[...] = (ri7[...] * 3 + 1) % 7
          return ()
        blk19 = jax.jit(blk19)
        blk19 = ckpt(blk19, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable, prevent_cse=False)
        blk19(v15, x2, r4, r6, ri7, r3, r5)
        ri7[x17 % 4] = (ri7[x17 % 4] * 3 + 1) % 7
        return (x2,)
      blk18 = ckpt(blk18, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=True)
      (v21,) = blk18(x2, r5, ri7, r3, r4)
      ri7[1:4] = x17 + jnp.zeros((3,), jnp.int32)
      return (jnp.sin(v15 + v21),), v21
    (v22,), v23 = lax.scan(scan16, (v15,), jnp.arange(2, dtype=jnp.int32))
    return (v23, v22, v15)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array([1.272, -1.024, -0.736, -0.452], np.float32)),
      'r4': jax.new_ref(np.array([1.216, 1.149, -0.766, -0.326], np.float32)),
      'r5': jax.new_ref(np.array(0.14, np.float32)),
      'r6': jax.new_ref(np.array([-1.252, -0.781, -1.109, 0.223], np.float32)),
      'ri7': jax.new_ref(np.array([5, 3, 2, 2], np.int32)),
  }


XS = (np.array(0.79, np.float32), )
CLOSED_REFS = ('r3', 'r4', 'r5', 'r6', 'ri7')
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
