"""Fuzz program (generator 1, seed 214, frozen): remat must be transparent.

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
    def scan7(carry, x8):
      (x2, x4) = carry
      v9 = jnp.broadcast_to(x4, (4,))
      def jb29(v9):
        t10 = jax.new_ref(v9)
        t10[...] = t10[...] * 2 + jnp.sin(t10[...])
        v11 = t10[...]
        def blk19(v11, t10):
          v12 = v11 + jnp.tanh(jnp.sum(r5[...])) * 0.5
          def loop15(i13, carry):
            (v12,) = carry
            r5[2] = r5[2] * 0.5 + 0.25
            r5[i13 % 4] = r5[i13 % 4] + lax.stop_gradient(jnp.tanh(v12[3]) * 0.25)
            return (jnp.sin(v12) * r5[...] + v12 * 0.5,)
          (v14,) = lax.fori_loop(0, 1, loop15, (v12,))
          v17 = checkpoint_name(v14, 'n16')
          return (v17,)
        blk19 = ckpt(blk19, policy=jax.checkpoint_policies.save_only_these_names('n16'), prevent_cse=True)
        blk19 = jax.jit(blk19)
        (v18,) = blk19(v11, t10)
        def blk27(v18, r5, r6):
          v20 = jnp.sin(v18) * r5[...] + v18 * 0.5
          r5[...] = r5[...] * 0.5 + 0.25
          def blk24(v20):
            t21 = jax.new_ref(v20)
            t21[...] = t21[...] * 2 + jnp.sin(t21[...])
            v22 = jnp.sin(t21[...])
            return (v22,)
          blk24 = ckpt(blk24, policy=jax.checkpoint_policies.everything_saveable, prevent_cse=True)
          (v23,) = blk24(v20)
          r5[...] += 0.5
          v25 = jnp.sin(v23) * r5[...] + v23 * 0.5
          return (v25,)
        blk27 = ckpt(blk27, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
        (v26,) = blk27(v18, r5, r6)
        return (v26,)
      jb29 = jax.jit(jb29)
      (v28,) = jb29(v9)
      t30 = jax.new_ref(v28)
      t30[...] = t30[...] * 2 + jnp.sin(t30[...])
      v31 = jnp.sin(t30[...])
      v32 = jnp.sin(v31) * t30[...] + v31 * 0.5
      v33 = jnp.tanh(v32 * 1.3 + 0.1)
      v34 = jnp.tanh(x4)
      v35 = v31 + v9
      def scan36(carry, x37):
        (v35, v9) = carry
        v39 = checkpoint_name(v31, 'n38')
        return (jnp.tanh(v35 + v39), jnp.tanh(v9 + v39)), v39[3]
      (v40, v41), v42 = lax.scan(scan36, (v35, v9), jnp.arange(2, dtype=jnp.int32))
      return (jnp.tanh(jnp.pad(v42, (0, 2))), jnp.tanh(x4 + v41[3])), jnp.sin(jnp.sum(v40))
    (v43, v44), v45 = lax.scan(scan7, (x2, x4), jnp.arange(2, dtype=jnp.int32))
    v46 = jnp.where(jnp.broadcast_to(jnp.sum(v45), (4,)) > 0, x2, jnp.broadcast_to(v44, (4,)))
    v47 = jnp.sin(v43)
    v49 = checkpoint_name(v44, 'n48')
    def blk50(x2, v46, r5):
      v51 = v49 * jnp.ones(4, jnp.float32)
      v52 = v51 * r5[3]
      v53 = jnp.sin(v52) * r5[...] + v52 * 0.5
      return (v52, v53)
    blk50 = ckpt(blk50, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    (v54, v55) = blk50(x2, v46, r5)
    return (v46, v47, v55)
  return jax.jit(f)


def make_refs():
  return {
      'r5': jax.new_ref(np.array([0.468, 0.264, 0.498, 1.273], np.float32)),
      'r6': jax.new_ref(np.array([0.221, 0.593, 0.758, 1.204], np.float32)),
  }


XS = (np.array([1.226, -0.273, -0.745, 0.787], np.float32), np.array(1.264, np.float32), )
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
