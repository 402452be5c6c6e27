"""Fuzz program (generator 1 before motifs, seed 1035; frozen): remat must be transparent.

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


def build(remat, r3, r4, ri6):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, r5):
    def loop7(i8, carry):
      (x2,) = carry
      v9 = x2 + x2
      v10 = ri6[...].astype(jnp.float32)
      return (jnp.tanh(v10 * jnp.ones(4, jnp.float32)),)
    (v11,) = lax.fori_loop(0, 1, loop7, (x2,))
    v12 = v11 + x2
    def scan13(carry, x14):
      (v11,) = carry
      v15 = x14 + x14
      v16 = r4[2]
      v17 = jnp.sin(v16)
      def blk18(x2, v15):
        v19 = jnp.sum(x2)
        def scan20(carry, x21):
          (x14,) = carry
          def blk22(r3, r4):
            v23 = jnp.where(v17 > 0, x21, v16)
            def blk24(v15, v12, v23, r4, ri6):
              v25 = jnp.sin(v19 * jnp.sum(x2))
              return (v25, v25)
            blk24 = ckpt(blk24, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
            (v26, v27) = blk24(v15, v12, v23, r4, ri6)
            v28 = r5[3:4]
            v29 = v27 * jnp.sum(v28)
            ri6[...] = (v23 > 0).astype(jnp.int32)
            return (v27, v29, v26)
          blk22 = jax.jit(blk22)
          blk22 = ckpt(blk22, prevent_cse=False)
          (v30, v31, v32) = blk22(r3, r4)
          r4[2] = lax.stop_gradient(v32)
          return (jnp.tanh(v17),), x21
        (v33,), v34 = lax.scan(scan20, (x14,), x2)
        return (v33, v33, v34)
      blk18 = ckpt(blk18, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=True)
      (v35, v36, v37) = blk18(x2, v15)
      return (jnp.tanh(v11 + v15 * jnp.ones(4, jnp.float32)),), v17
    (v38,), v39 = lax.scan(scan13, (v11,), x2)
    return (v12, v39, v11)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array(-1.479, np.float32)),
      'r4': jax.new_ref(np.array([0.86, -0.489, 0.491, -0.338], np.float32)),
      'r5': jax.new_ref(np.array([0.917, -1.036, 0.749, -0.605], np.float32)),
      'ri6': jax.new_ref(np.array(4, np.int32)),
  }


XS = (np.array([-1.03, -1.351, -1.425, 0.585], np.float32), )
CLOSED_REFS = ('r3', 'r4', 'ri6')
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
