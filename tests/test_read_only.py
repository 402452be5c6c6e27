"""`jax_remat_refs.read_only_ref` is deprecated: a plain ref costs no copy in
value form. It keeps working: an ordinary ref whose writes inside a remat body
are a trace-time error."""
import functools
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
from jax._src import test_util as jtu

import jax_remat_refs as jrr


def no_remat(f):
  return f


def read_only_ref(x):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    return jrr.read_only_ref(x)


def stacked_loss(x, ws, *, rm, make_ref):
  w_ref = make_ref(ws)
  def layer(h, i):
    return jnp.tanh(h @ w_ref[i])
  h, _ = lax.scan(lambda h, i: (rm(layer)(h, i), None), x,
                  jnp.arange(ws.shape[0]))
  return jnp.sum(h ** 2)


class ReadOnlyRefTest(jtu.JaxTestCase):

  def setUp(self):
    super().setUp()
    self.x = jnp.linspace(-1., 1., 8).reshape(2, 4)
    self.ws = jnp.arange(48., dtype=jnp.float32).reshape(3, 4, 4) / 60.

  def test_deprecated(self):
    with self.assertWarnsRegex(DeprecationWarning, "jax.new_ref"):
      r = jrr.read_only_ref(jnp.ones(3))
    self.assertAllClose(r[...], jnp.ones(3))

  @parameterized.product(jit=[False, True], argnum=[0, 1])
  def test_gradients_match_no_remat(self, jit, argnum):
    def grad_of(rm, make_ref):
      g = jax.grad(functools.partial(stacked_loss, rm=rm, make_ref=make_ref),
                   argnums=argnum)
      return (jax.jit(g) if jit else g)(self.x, self.ws)
    expected = grad_of(no_remat, jax.new_ref)
    self.assertAllClose(grad_of(jax.remat, read_only_ref), expected)

  def test_write_inside_remat_is_a_trace_time_error(self):
    r = read_only_ref(jnp.ones(3))
    @jax.remat
    def f(x):
      r[1] = 2.
      return jnp.sum(x * r[...])
    with self.assertRaisesRegex(jrr.RematRefError, "read-only"):
      jax.grad(f)(jnp.ones(3))

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_write_between_passes_matches_no_remat(self, jit):
    # The rematerialization sees the value at remat entry, whatever happens
    # to the ref afterwards (the old checksum check raised here).
    def prog(rm):
      r = read_only_ref(jnp.array([1., 2., 3.]))
      def loss(x):
        y = rm(lambda x: jnp.sum(jnp.sin(x * r[...])))(x)
        r[...] = r[...] * 2.
        return y
      g = jax.grad(loss)
      return (jax.jit(g) if jit else g)(jnp.array([.1, .2, .3])), r[...]
    self.assertAllClose(prog(jax.remat), prog(no_remat))


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
