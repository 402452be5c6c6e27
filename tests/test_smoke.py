"""The seed program of the core issue, against hand-computed values."""
from absl.testing import absltest
import jax
from jax._src import test_util as jtu

import jax_remat_refs  # noqa: F401  (activates the patch)
from jax_remat_refs import _compat
from tests.transparency import seed, seed_program


class SeedTest(jtu.JaxTestCase):

  def test_seed_program(self):
    g, x = seed_program(jax.remat)
    # d/dy (y * x) with x = 1 at entry; one increment in the forward pass.
    self.assertAllClose(g, 1.0)
    self.assertAllClose(x, 2.0)

  def test_upstream_behaviour_is_restorable(self):
    x_ref = jax.new_ref(1.)
    if not _compat.REMAT_ALLOWS_REF_EFFECTS:
      # Upstream refuses ref effects in a differentiated remat (jax <= 0.8.0).
      with jax_remat_refs.upstream_behavior():
        with self.assertRaisesRegex(NotImplementedError, "Effects not supported"):
          jax.grad(jax.remat(seed))(1., x_ref)
      self.assertTrue(jax_remat_refs.is_active())
      return
    with jax_remat_refs.upstream_behavior():
      g = jax.grad(jax.remat(seed))(1., x_ref)
    # Upstream replays the increment and reads the mutated ref.
    self.assertAllClose(g, 2.0)
    self.assertAllClose(x_ref[...], 3.0)
    self.assertTrue(jax_remat_refs.is_active())


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
