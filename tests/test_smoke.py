"""The seed program of the core issue, against hand-computed values."""
from absl.testing import absltest
import jax
from jax._src import test_util as jtu

import jax_remat_refs  # noqa: F401  (activates the patch)


def seed(y, x_ref):
  out = y * x_ref[...]
  x_ref[...] += 1
  return out


class SeedTest(jtu.JaxTestCase):

  def test_seed_program(self):
    x_ref = jax.new_ref(1.)
    g = jax.grad(jax.remat(seed))(1., x_ref)
    # d/dy (y * x) with x = 1 at entry; one increment in the forward pass.
    self.assertAllClose(g, 1.0)
    self.assertAllClose(x_ref[...], 2.0)

  def test_upstream_behaviour_is_restorable(self):
    x_ref = jax.new_ref(1.)
    with jax_remat_refs.upstream_behavior():
      g = jax.grad(jax.remat(seed))(1., x_ref)
    # Upstream replays the increment and reads the mutated ref.
    self.assertAllClose(g, 2.0)
    self.assertAllClose(x_ref[...], 3.0)
    self.assertTrue(jax_remat_refs.is_active())


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
