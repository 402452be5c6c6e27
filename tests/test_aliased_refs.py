"""One ref reaching a remat'd function at two inputs.

JAX's `jit` (and, from JAX 0.11, `checkpoint` itself) rejects a ref passed
twice, or closed over and passed; with the package, remat raises that same
error on every JAX version. With `jax_mutable_array_checks` off the two
names are one ref: writes through either are seen by both, or, where the
body hands the ref on to a nested call under both names, a RematRefError."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
from jax._src import config
from jax._src import test_util as jtu

import jax_remat_refs as jrr
from tests.transparency import TransparencyMixin

TWICE = "only one reference to a mutable array may be passed as an argument"
CLOSED = "was both closed over and passed as the argument"


def passed_twice(remat, nested=False):
  e = jax.new_ref(jnp.array([1., 2.]))
  @remat
  def f(h, p0, p1):
    if nested:
      def body(i, c):
        p1[0] = p1[0] + p0[1] * h
        return c + p0[0]
      return lax.fori_loop(0, 2, body, 0.)
    p1[0] = p1[0] + p0[1] * h
    return p0[0] * h
  return f(2., e, e), e[...]


def closed_over_and_passed(remat, nested=False):
  e = jax.new_ref(jnp.array([1., 2.]))
  @remat
  def f(h, p):
    if nested:
      def body(i, c):
        p[0] = p[0] + e[1] * h
        return c + e[0]
      return lax.fori_loop(0, 2, body, 0.)
    p[0] = p[0] + e[1] * h
    return e[0] * h
  return f(2., e), e[...]


class AliasedRefTest(TransparencyMixin, jtu.JaxTestCase):

  @parameterized.product(nested=[False, True], jit=[False, True])
  def test_passed_twice_is_jax_error(self, nested, jit):
    rm = (lambda f: jax.jit(jax.remat(f))) if jit else jax.remat
    with self.assertRaisesRegex(ValueError, TWICE + ".* at both p0 and p1"):
      passed_twice(rm, nested)
    with self.assertRaisesRegex(ValueError, TWICE):
      passed_twice(jax.jit, nested)   # what jit says of the same function

  @parameterized.parameters(False, True)
  def test_closed_over_and_passed_is_jax_error(self, nested):
    with self.assertRaisesRegex(ValueError, CLOSED + " p"):
      closed_over_and_passed(jax.remat, nested)
    with self.assertRaisesRegex(ValueError, CLOSED):
      closed_over_and_passed(jax.jit, nested)

  def test_checks_off_one_ref_two_names(self):
    with config.mutable_array_checks(False):
      out, e = self.assertTransparent(passed_twice)
      # p1[0] = 1 + 2 * 2 = 5 is seen through p0 too: out = 5 * 2.
      self.assertAllClose((out, e), (10., jnp.array([5., 2.])))
      out, e = self.assertTransparent(closed_over_and_passed)
      self.assertAllClose((out, e), (10., jnp.array([5., 2.])))

  @parameterized.parameters(passed_twice, closed_over_and_passed)
  def test_checks_off_nested_two_names_is_our_error(self, prog):
    with config.mutable_array_checks(False):
      self.assertAllClose(prog(lambda f: f, nested=True)[1],
                          jnp.array([9., 2.]))
      with self.assertRaisesRegex(jrr.RematRefError,
                                  "jax.remat: one ref reaches f .* at two inputs"
                                  ".* under both names to a (scan|while)"):
        prog(jax.remat, nested=True)

  def test_tied_weights_distinct_refs(self):
    # One remat'd layer applied to three weight refs and twice to one.
    def prog(remat):
      ws = [jax.new_ref(jnp.float32(w)) for w in (0.5, -1.2, 0.9)]
      @remat
      def layer(h, w):
        out = jnp.tanh(h * w[...])
        w[...] = w[...] * 0.9 + lax.stop_gradient(out) * 0.1
        return out
      def loss(x):
        h = x
        for w in ws + [ws[0]]:
          h = layer(h, w)
        return h
      return jax.value_and_grad(loss)(0.7), [w[...] for w in ws]
    self.assertTransparent(prog)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
