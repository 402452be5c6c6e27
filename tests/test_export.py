"""jax.export of jitted gradients of remat-with-refs programs.

jax.export does not accept refs as arguments (NotImplementedError in
`_export_lowered` when the lowering has mutable inputs) nor closed over
(ValueError from the lowered in_avals), with or without remat: the refs are
created inside the exported function. Exported programs are compared with the
same program without remat.

Serialization needs the `flatbuffers` package.
"""
import importlib.util
import unittest

from absl.testing import absltest
import jax
from jax import export
from jax import lax
import jax.numpy as jnp
from jax._src import test_util as jtu
from jax.ad_checkpoint import checkpoint_name

from tests.transparency import no_remat

HAVE_FLATBUFFERS = importlib.util.find_spec("flatbuffers") is not None


def f32(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def make_loss(R):
  @R
  def body(w, r):
    out = jnp.sin(w) * r[...]
    r[...] = r[...] * 2.
    return jnp.sum(out * r[...])
  def loss(w, s):
    r = jax.new_ref(s)
    return body(w, r), r[...]
  return jax.jit(jax.grad(loss, has_aux=True))


def make_scan_loss(R):
  def loss(w, xs):
    acc = jax.new_ref(jnp.zeros_like(w))
    @R
    def step(c, x):
      h = jnp.tanh(c * w + x)
      acc[...] += lax.stop_gradient(h)
      return h * acc[...], None
    c, _ = lax.scan(step, jnp.ones_like(w), xs)
    return jnp.sum(c), acc[...]
  return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))


class ExportRematRefTest(jtu.JaxTestCase):

  W = jnp.arange(3.) / 3
  S = jnp.array([1.5, -0.5, 2.])

  def _expected(self, make, *args):
    return make(no_remat)(*args)

  def test_export_call(self):
    exp = export.export(make_loss(jax.remat))(f32(3), f32(3))
    self.assertAllClose(exp.call(self.W, self.S),
                        self._expected(make_loss, self.W, self.S))

  @unittest.skipUnless(HAVE_FLATBUFFERS, "jax.export serialization needs the "
                       "flatbuffers package")
  def test_export_serialize_roundtrip(self):
    exp = export.export(make_loss(jax.remat))(f32(3), f32(3))
    blob = exp.serialize()
    back = export.deserialize(blob)
    self.assertAllClose(back.call(self.W, self.S),
                        self._expected(make_loss, self.W, self.S))
    # and called under jit, as a function of the caller
    self.assertAllClose(jax.jit(back.call)(self.W, self.S),
                        self._expected(make_loss, self.W, self.S))

  @unittest.skipUnless(HAVE_FLATBUFFERS, "jax.export serialization needs the "
                       "flatbuffers package")
  def test_export_serialize_roundtrip_scan_with_ref_state(self):
    xs = jnp.arange(12.).reshape(4, 3) / 12
    exp = export.export(make_scan_loss(jax.remat))(f32(3), f32(4, 3))
    back = export.deserialize(exp.serialize())
    self.assertAllClose(back.call(self.W, xs),
                        self._expected(make_scan_loss, self.W, xs))

  def test_export_with_names_policy(self):
    def make(R):
      def body(w, r):
        a = checkpoint_name(jnp.sin(w) * r[...], "a")
        r[...] = r[...] + 1.
        return jnp.sum(jnp.cos(a) * r[...])
      if R is jax.remat:
        body = jax.checkpoint(
            body, policy=jax.checkpoint_policies.save_only_these_names("a"))
      def loss(w, s):
        r = jax.new_ref(s)
        return body(w, r), r[...]
      return jax.jit(jax.grad(loss, has_aux=True))
    exp = export.export(make(jax.remat))(f32(3), f32(3))
    self.assertAllClose(exp.call(self.W, self.S), make(no_remat)(self.W, self.S))

  def test_export_shape_polymorphic(self):
    b, = export.symbolic_shape("b")
    exp = export.export(make_loss(jax.remat))(f32(b), f32(b))
    for n in (3, 5):
      w, s = jnp.arange(float(n)) / n, jnp.linspace(-1., 2., n)
      self.assertAllClose(exp.call(w, s), self._expected(make_loss, w, s))

  def test_ref_argument_rejected_as_without_remat(self):
    def make(R):
      @R
      def loss(w, r):
        out = jnp.sin(w) * r[...]
        r[...] = r[...] * 2.
        return jnp.sum(out)
      return jax.jit(jax.grad(loss))
    r = jax.new_ref(jnp.ones(3))
    with self.assertRaises(NotImplementedError):
      export.export(make(no_remat))(f32(3), r)
    with self.assertRaises(NotImplementedError):
      export.export(make(jax.remat))(f32(3), r)
    self.assertAllClose(r[...], jnp.ones(3))


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
