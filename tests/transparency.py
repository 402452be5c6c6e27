"""The test oracle shared by the suite: a remat is transparent when the
program gives what it gives with every remat replaced by the identity."""
import jax
import numpy as np

import jax_remat_refs  # noqa: F401  (activates the patch)


def no_remat(fun=None, **kwargs):
  """Identity with `jax.remat`'s signature: the oracle's remat."""
  del kwargs
  return (lambda f: f) if fun is None else fun


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


# The function of the project's issue: it reads the ref, then increments it.
# (No docstring: tests point at its first access, co_firstlineno + 1.)
def seed(y, x_ref):
  out = y * x_ref[...]
  x_ref[...] += 1
  return out


def seed_program(remat):
  """The program of the project's issue, `seed` under `remat` differentiated
  at y = 1 with x = 1 at entry: (gradient, final ref), 1.0 / 2.0 when remat
  is transparent (upstream JAX: 2.0 / 3.0)."""
  x_ref = jax.new_ref(1.)
  return jax.grad(remat(seed))(1., x_ref), x_ref[...]


class TransparencyMixin:
  """For `jtu.JaxTestCase`s: `assertTransparent(prog)` runs `prog(remat)` and
  `prog(no_remat)` and asserts that they agree (outputs, gradients, final
  ref contents: whatever `prog` returns); with `expected`, that both equal
  it (a hand-computed figure). The two runs must agree in dtypes too; the
  hand figures are compared by value only."""

  def assertTransparent(self, prog, remat=jax.remat, expected=None, **tol):
    want = as_numpy(prog(no_remat))
    got = as_numpy(prog(remat))
    self.assertAllClose(got, want, **tol)
    if expected is not None:
      self.assertAllClose(want, expected, check_dtypes=False, **tol)
    return got
