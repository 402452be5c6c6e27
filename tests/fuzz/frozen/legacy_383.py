"""Fuzz program (generator 1 before motifs, seed 383; frozen): remat must be transparent.

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


def build(remat, r3, r5, ri6):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, r4):
    def blk7(x2, r3, r4, r5, ri6):
      v8 = r3[...]
      v9 = jnp.sin(jnp.dot(v8, jnp.broadcast_to(x2, (4,))))
      v11 = checkpoint_name(v8, 'n10')
      v12 = v11 + v8
      v13 = jnp.cos(v12)
      def loop14(i15, carry):
        (v11, x2) = carry
        v16 = r4[ri6[0] % 4]
        v17 = checkpoint_name(v9, 'n10')
        v18 = ri6[0].astype(jnp.float32)
        def loop19(i20, carry):
          (v8, v18) = carry
          v21 = jnp.sin(v16 * v8[2])
          v23 = checkpoint_name(v21, 'n22')
          r3[0] += lax.stop_gradient(v23)
          return (jnp.tanh(v8 + jnp.broadcast_to(v21, (4,))), jnp.sin(v18 + v23))
        (v24, v25) = lax.fori_loop(0, 2, loop19, (v8, v18))
        return (jnp.sin(jnp.broadcast_to(v17, (4,))), jnp.tanh(v16))
      (v26, v27) = lax.fori_loop(0, 2, loop14, (v11, x2))
      return (v27, v8, v13)
    blk7 = ckpt(blk7, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=True)
    (v28, v29, v30) = blk7(x2, r3, r4, r5, ri6)
    return (v29, v28, v30)
  return f


def make_refs():
  return {
      'r3': jax.new_ref(np.array([0.661, 1.411, -1.237, -0.912], np.float32)),
      'r4': jax.new_ref(np.array([1.265, 0.93, -1.17, -1.481], np.float32)),
      'r5': jax.new_ref(np.array([-0.638, -0.117, -0.265, 0.21], np.float32)),
      'ri6': jax.new_ref(np.array([1, 1, 1, 2], np.int32)),
  }


XS = (np.array(-0.06, np.float32), )
CLOSED_REFS = ('r3', 'r5', 'ri6')
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
