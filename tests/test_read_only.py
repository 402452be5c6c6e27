"""Refs declared read-only (`jax_remat_refs.read_only_ref`): the
rematerialization reads the live ref (no copy), and a broken declaration is
an error, never a wrong gradient."""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax._src import test_util as jtu

import jax_remat_refs as jrr


def no_remat(f):
  return f


def stacked_loss(x, ws, *, rm, make_ref, nested=False):
  w_ref = make_ref(ws)
  def layer(h, i):
    return jnp.tanh(h @ w_ref[i])
  h, _ = lax.scan(lambda h, i: (rm(layer)(h, i), None), x,
                  jnp.arange(ws.shape[0]))
  if nested:
    h = rm(lambda h: rm(layer)(h, 1))(h)
  return jnp.sum(h ** 2)


class ReadOnlyRefTest(jtu.JaxTestCase):

  def setUp(self):
    super().setUp()
    self.x = jnp.linspace(-1., 1., 8).reshape(2, 4)
    self.ws = jnp.arange(48., dtype=jnp.float32).reshape(3, 4, 4) / 60.

  @parameterized.product(jit=[False, True], nested=[False, True],
                         argnum=[0, 1])
  def test_gradients_match_no_remat(self, jit, nested, argnum):
    def grad_of(rm, make_ref):
      g = jax.grad(functools.partial(stacked_loss, rm=rm, make_ref=make_ref,
                                     nested=nested), argnums=argnum)
      return (jax.jit(g) if jit else g)(self.x, self.ws)
    expected = grad_of(no_remat, jax.new_ref)
    self.assertAllClose(grad_of(jax.remat, jrr.read_only_ref), expected)

  def _forward_scan_outputs(self, make_ref):
    loss = functools.partial(stacked_loss, rm=jax.remat, make_ref=make_ref)
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=0))(self.x, self.ws).jaxpr
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    return [tuple(v.aval.shape) for v in scans[0].outvars]

  def test_no_copy_is_saved(self):
    # The forward scan stacks the per-layer residuals. With a plain ref they
    # include the weight slices each layer read, (3, 4, 4) in all; with a
    # read-only ref the rematerialization reads the live ref instead.
    self.assertIn((3, 4, 4), self._forward_scan_outputs(jax.new_ref))
    self.assertNotIn((3, 4, 4), self._forward_scan_outputs(jrr.read_only_ref))

  def test_write_inside_remat_is_a_trace_time_error(self):
    def f(x, w):
      w_ref = jrr.read_only_ref(w)
      def body(x):
        w_ref[...] = w_ref[...] + 1.
        return x * w_ref[...]
      return jax.grad(jax.remat(body))(x)
    with self.assertRaisesRegex(jrr.RematRefError,
                                r"declared read-only.*writes it.*test_read_only"):
      f(1., 2.)

  @parameterized.parameters(False, True)
  def test_write_between_passes_is_a_runtime_error(self, jit):
    def f(x, w):
      w_ref = jrr.read_only_ref(w)
      g = jax.remat(lambda x: jnp.sin(x * w_ref[...]))
      _, vjp = jax.vjp(g, x)
      w_ref[...] = w * 2.  # breaks the declaration
      return vjp(1.)
    f = jax.jit(f) if jit else f
    with self.assertRaisesRegex(Exception, "declared read-only.*contents changed"):
      jax.block_until_ready(f(1., 2.))

  @parameterized.parameters(False, True)
  def test_write_between_passes_nested_use(self, jit):
    # The body hands the ref to a loop, so it is snapshotted like any ref:
    # a later write cannot change the gradient, which is the no-remat one.
    def f(rm, make_ref, x, w):
      w_ref = make_ref(w)
      def body(x):
        return lax.fori_loop(0, 2, lambda i, c: jnp.sin(c * w_ref[i]), x)
      _, vjp = jax.vjp(rm(body), x)
      w_ref[1] = 5.
      return vjp(1.)
    w = jnp.array([2., 3.])
    got = (jax.jit(f, static_argnums=(0, 1)) if jit else f)(
        jax.remat, jrr.read_only_ref, 1., w)
    self.assertAllClose(got, f(no_remat, jax.new_ref, 1., w))

  def test_nested_use_unchanged_matches_no_remat(self):
    def f(rm, make_ref, x, w):
      w_ref = make_ref(w)
      def body(x):
        return lax.fori_loop(0, 2, lambda i, c: jnp.sin(c * w_ref[i]), x)
      return jax.grad(rm(body))(x)
    w = jnp.array([2., 3.])
    self.assertAllClose(f(jax.remat, jrr.read_only_ref, 0.3, w),
                        f(no_remat, jax.new_ref, 0.3, w))

  def test_write_to_unread_part_between_passes_is_fine(self):
    # Only what the rematerialization reads must be unchanged.
    def f(x, w):
      w_ref = jrr.read_only_ref(w)
      g = jax.remat(lambda x: jnp.sin(x * w_ref[0]))
      _, vjp = jax.vjp(g, x)
      w_ref[1] = 7.
      return vjp(1.)
    (g,) = f(1., jnp.array([2., 3.]))
    self.assertAllClose(g, 2. * np.cos(2.))

  def test_unchanged_between_passes_is_fine(self):
    def f(x, w):
      w_ref = jrr.read_only_ref(w)
      g = jax.remat(lambda x: jnp.sin(x * w_ref[...]))
      _, vjp = jax.vjp(g, x)
      w_ref[...] = w_ref[...] * 1.  # same contents
      return vjp(1.)
    (g,) = f(1., 2.)
    self.assertAllClose(g, 2. * np.cos(2.))  # d/dx sin(2x) at x = 1

  def test_checksum_sees_small_changes(self):
    x = jnp.arange(1000., dtype=jnp.float32)
    base = np.asarray(jrr._read_only.checksum(x))
    for i in (0, 1, 500, 999):
      for delta in (1., -1e-3):
        y = x.at[i].add(delta)
        self.assertFalse(np.array_equal(base, jrr._read_only.checksum(y)))
    # A permutation of the same values is a change too.
    self.assertFalse(np.array_equal(base, jrr._read_only.checksum(x[::-1])))
    self.assertTrue(np.array_equal(base, jrr._read_only.checksum(x + 0.)))

  @parameterized.parameters(np.float64, np.int64, np.float32, np.bool_)
  def test_eight_byte_dtypes_under_x64(self, dtype):
    # With x64 on, 8-byte refs are checked on both 32-bit words of each
    # element (this used to crash reshaping the words).
    with jax.enable_x64(True):
      vals = np.array([3, 1, 2], dtype)
      x = jnp.array([0.5, -1., 2.], np.float64)
      def f(rm, x):
        w_ref = jrr.read_only_ref(vals) if rm is jax.remat else jax.new_ref(vals)
        g = rm(lambda x: jnp.sum(jnp.sin(x * w_ref[...].astype(x.dtype))))
        return jax.grad(g)(x)
      got = f(jax.remat, x)
      self.assertEqual(got.dtype, np.float64)
      self.assertAllClose(got, f(no_remat, x))
      self.assertAllClose(got, np.cos(x * vals.astype(np.float64))
                          * vals.astype(np.float64))
      # A change in either word of one element changes the checksum.
      base = np.asarray(jrr._read_only.checksum(jnp.asarray(vals)))
      if np.dtype(dtype).kind == "f":
        # the smallest change (low word) and a change of the exponent
        changes = [np.nextafter(vals[1], dtype(np.inf)), vals[1] * 4]
      elif np.dtype(dtype).kind == "i":
        changes = [vals[1] + 1] + ([vals[1] + 2 ** 40] if dtype == np.int64
                                   else [])
      else:
        changes = [np.logical_not(vals[1])]
      for new in changes:
        changed = vals.copy()
        changed[1] = new
        self.assertFalse(np.array_equal(
            base, jrr._read_only.checksum(jnp.asarray(changed))))

      def broken(x):
        w_ref = jrr.read_only_ref(vals)
        g = jax.remat(lambda x: jnp.sum(x * w_ref[...].astype(x.dtype)))
        _, vjp = jax.vjp(g, x)
        w_ref[...] = jnp.logical_not(vals) if dtype == np.bool_ else vals * 2
        return vjp(1.)
      with self.assertRaisesRegex(Exception,
                                  "declared read-only.*contents changed"):
        jax.block_until_ready(broken(x))


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
