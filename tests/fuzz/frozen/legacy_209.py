"""Fuzz program (generator 1 before motifs, seed 209; frozen): remat must be transparent.

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


def build(remat, r3, ri5):
  def ckpt(fun, **kw):
    return jax.checkpoint(fun, **kw) if remat else fun

  def f(x2, r4):
    r3[0:2] = lax.stop_gradient(x2[2:4])
    v6 = jnp.where(x2 > 0, x2, x2)
    jax.debug.callback(_cb, x2)
    def blk7(v6, r4, r3, ri5):
      q8 = jax.new_ref(jnp.tanh(jnp.sum(x2)))
      q9 = jax.new_ref(v6[2])
      jax.ref.addupdate(q8, ..., jnp.tanh(jnp.sum(v6)))
      def scan10(carry, x11):
        (v6,) = carry
        v12 = jnp.tanh(x11)
        def tbr13(ops):
          (v12,) = ops
          v14 = q8[...]
          v15 = x2 - v14 * jnp.ones(4, jnp.float32)
          v16 = q9[...]
          return ()
        def fbr13(ops):
          (v12,) = ops
          jax.debug.callback(_cb, x2)
          v17 = r3[0]
          return ()
        lax.cond(x11 > 0, tbr13, fbr13, (v12,))
        return (jnp.tanh(v12 * jnp.ones(4, jnp.float32)),), x11
      (v18,), v19 = lax.scan(scan10, (v6,), v6)
      return (v18, v18)
    blk7 = ckpt(blk7, policy=jax.checkpoint_policies.save_only_these_names('n0'), prevent_cse=False)
    (v20, v21) = blk7(v6, r4, r3, ri5)
    return (v21,)
  return jax.jit(f)


def make_refs():
  return {
      'r3': jax.new_ref(np.array([-0.541, -0.892, -1.295, -0.026], np.float32)),
      'r4': jax.new_ref(np.array(-1.416, np.float32)),
      'ri5': jax.new_ref(np.array([5, 2, 5, 0], np.int32)),
  }


XS = (np.array([-1.226, 0.522, -1.266, -1.007], np.float32), )
CLOSED_REFS = ('r3', 'ri5')
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
