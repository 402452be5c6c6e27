"""Fuzz program (generator 1 before motifs, seed 186; frozen): remat must be transparent.

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

  def f(x2, x4, x6, r7, r8, r9, r10):
    def scan11(carry, x12):
      (x2,) = carry
      q13 = jax.new_ref(x12 * jnp.ones(3, jnp.float32))
      return (jnp.tanh(x2 + jnp.broadcast_to(x12, (3,))),), x12
    (v14,), v15 = lax.scan(scan11, (x2,), x6)
    v16 = v14 + v15
    v17 = r10[...]
    v18 = x2 * x6
    r10[...] = lax.stop_gradient(x2[2])
    def loop19(i20, carry):
      v21 = jax.ref.swap(r9, 2, lax.stop_gradient(jnp.sin(jnp.sum(x2))))
      return ()
    lax.fori_loop(0, 3, loop19, ())
    q22 = jax.new_ref(jnp.tanh(jnp.sum(x6)))
    r9[1:2] += lax.stop_gradient(x2[2:3])
    q23 = jax.new_ref(v15)
    v24 = jnp.where(jnp.broadcast_to(x4, (3,)) > 0, x6, v16)
    v25 = v18 + jnp.broadcast_to(v17, (3,))
    v26 = r7[2]
    def blk27(x4, v17):
      v29 = checkpoint_name(v26, 'n28')
      jax.ref.addupdate(q22, ..., jnp.sin(v29))
      return (v29, x4)
    blk27 = ckpt(blk27, policy=jax.checkpoint_policies.save_only_these_names('n28'), prevent_cse=False)
    blk27 = jax.jit(blk27)
    (v30, v31) = blk27(x4, v17)
    return (v30,)
  return f


def make_refs():
  return {
      'r7': jax.new_ref(np.array([0.53, -1.096, 1.03], np.float32)),
      'r8': jax.new_ref(np.array([1.422, 0.4, -0.624], np.float32)),
      'r9': jax.new_ref(np.array([-1.166, -1.167, 0.618], np.float32)),
      'r10': jax.new_ref(np.array(0.298, np.float32)),
  }


XS = (np.array([1.488, -0.081, -1.138], np.float32), np.array(-0.908, np.float32), np.array([0.17, -0.172, -1.375], np.float32), )
CLOSED_REFS = ()
ARG_REFS = ('r7', 'r8', 'r9', 'r10')
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
