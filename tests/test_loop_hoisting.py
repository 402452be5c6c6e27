"""Reads of refs a loop never writes are hoisted like array consts, so a
remat per layer over stacked weights in a ref saves no copy of them."""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
from jax._src import test_util as jtu

from tests.transparency import TransparencyMixin


def stacked_loss(x, ws, *, rm, write_in_loop=False, array=False):
  w = ws if array else jax.new_ref(ws)
  def layer(h, i):
    if write_in_loop:
      w[i] = w[i] * 0.5
    return jnp.tanh(h @ w[i])
  h, _ = lax.scan(lambda h, i: (rm(layer)(h, i), None), x,
                  jnp.arange(ws.shape[0]))
  return jnp.sum(h ** 2)


class LoopHoistingTest(TransparencyMixin, jtu.JaxTestCase):

  def setUp(self):
    super().setUp()
    self.x = jnp.linspace(-1., 1., 8).reshape(2, 4)
    self.ws = jnp.arange(48., dtype=jnp.float32).reshape(3, 4, 4) / 60.

  def _forward_scan_outputs(self, **kw):
    loss = functools.partial(stacked_loss, rm=jax.remat, **kw)
    jaxpr = jax.make_jaxpr(jax.grad(loss))(self.x, self.ws).jaxpr
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    return [tuple(v.aval.shape) for v in scans[0].outvars]

  def test_weights_in_a_ref_are_not_stacked(self):
    # Without hoisting each layer's residual would be the whole ref, (3, 3,
    # 4, 4) stacked; the ref costs what weights in an array cost.
    self.assertEqual(self._forward_scan_outputs(),
                     self._forward_scan_outputs(array=True))
    self.assertNotIn((3, 3, 4, 4), self._forward_scan_outputs())

  def test_written_ref_is_not_hoisted(self):
    # A ref the loop writes changes per iteration: its values are stacked.
    self.assertIn((3, 3, 4, 4), self._forward_scan_outputs(write_in_loop=True))

  @parameterized.product(jit=[False, True], write_in_loop=[False, True],
                         argnum=[0, 1])
  def test_gradients_match_no_remat(self, jit, write_in_loop, argnum):
    def grad_of(rm):
      g = jax.grad(functools.partial(stacked_loss, rm=rm,
                                     write_in_loop=write_in_loop),
                   argnums=argnum)
      return (jax.jit(g) if jit else g)(self.x, self.ws)
    self.assertTransparent(grad_of)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
