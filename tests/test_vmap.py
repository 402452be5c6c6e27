"""jax.vmap and remat with refs: every program is compared with the same
program without remat (`no_remat` in place of `jax.remat`)."""
from absl.testing import absltest
import jax
from jax import lax
import jax.numpy as jnp
from jax._src import test_util as jtu

from tests.transparency import TransparencyMixin, no_remat


class VmapRematRefTest(TransparencyMixin, jtu.JaxTestCase):

  def test_ref_created_inside_vmapped_function_from_batched_value(self):
    def prog(R):
      @R
      def body(y, r):
        out = y * r[...]
        r[...] += 1.
        return out
      def f(y, x):
        r = jax.new_ref(x)
        out = body(y, r)
        return out * r[...]
      ys, xs = jnp.arange(3.), jnp.arange(3.) + 1.
      return (jax.vmap(f)(ys, xs),
              jax.vmap(jax.grad(f, argnums=(0, 1)))(ys, xs))
    self.assertTransparent(prog)

  def test_batched_ref_closed_over_by_remat_inside_vmapped_function(self):
    def prog(R):
      def f(y, x):
        r = jax.new_ref(x)            # batched: made from a vmapped value
        @R
        def g(y):
          out = jnp.sin(y) * r[...]
          r[...] = r[...] * y         # batched write into a batched ref
          return out
        out = g(y)
        return out * r[...]
      ys, xs = jnp.arange(3.) / 3, jnp.arange(3.) + 1.
      return (jax.vmap(f)(ys, xs),
              jax.vmap(jax.grad(f, argnums=(0, 1)))(ys, xs),
              jax.grad(lambda ys, xs: jax.vmap(f)(ys, xs).sum(),
                       argnums=(0, 1))(ys, xs))
    self.assertTransparent(prog)

  def test_batched_ref_passed_with_in_axes_zero(self):
    def prog(R):
      @R
      def body(y, r):
        out = jnp.sin(y * r[...]).sum()
        r[...] = r[...] * 3.
        return out
      r = jax.new_ref(jnp.arange(6.).reshape(3, 2) + 1.)
      g = jax.vmap(jax.grad(body), in_axes=(0, 0))(jnp.arange(3.), r)
      return g, r[...]
    self.assertTransparent(prog)

  def test_batched_ref_vmap_over_other_args_grad_outside(self):
    def prog(R):
      @R
      def body(y, r):
        out = y * r[...]
        r[...] = r[...] * 2.
        return out
      def loss(ys, xs):
        r = jax.new_ref(xs)          # a ref of batched shape
        out = jax.vmap(body, in_axes=(0, 0))(ys, r)
        return out.sum() + r[...].sum()
      return jax.value_and_grad(loss, argnums=(0, 1))(
          jnp.arange(3.), jnp.arange(3.) + 1.)
    self.assertTransparent(prog)

  def test_unbatched_ref_in_axes_none_read_only(self):
    def prog(R):
      @R
      def body(y, r):
        return jnp.sin(y * r[...]).sum()
      r = jax.new_ref(jnp.array([1., 2.]))
      return jax.vmap(jax.grad(body), in_axes=(0, None))(jnp.arange(3.), r)
    self.assertTransparent(prog)

  def test_closed_over_ref_read_only_grad_of_vmap(self):
    def prog(R):
      r = jax.new_ref(2.)
      @R
      def body(y):
        return jnp.sin(y) * r[...]
      g = jax.grad(lambda ys: jax.vmap(body)(ys).sum())(jnp.arange(3.))
      return g, r[...]
    self.assertTransparent(prog)

  def test_batched_ref_accumulating_stopped_values(self):
    def prog(R):
      r = jax.new_ref(jnp.zeros(3))
      @R
      def body(y, acc):
        acc[...] += lax.stop_gradient(jnp.sin(y))
        return jnp.cos(y) * acc[...]
      g = jax.grad(lambda ys: jax.vmap(body)(ys, r).sum())(jnp.arange(3.))
      return g, r[...]
    self.assertTransparent(prog)

  def test_remat_inside_vmap_inside_grad(self):
    def prog(R):
      @R
      def body(w, r):
        v = r[...]
        r[...] = v * w
        return jnp.tanh(w * v)
      def per_example(w, x):
        r = jax.new_ref(x)
        return body(w, r) + r[...]
      def loss(w, xs):
        return jax.vmap(per_example, in_axes=(None, 0))(w, xs).sum()
      return jax.value_and_grad(loss, argnums=(0, 1))(0.7, jnp.arange(4.) / 4)
    self.assertTransparent(prog)

  def test_jit_vmap_grad_with_ref_state(self):
    def prog(R):
      @R
      def body(w, r):
        out = jnp.sin(w * r[...])
        r[...] = r[...] + 1.
        return out.sum()
      r = jax.new_ref(jnp.arange(6.).reshape(3, 2))
      f = jax.jit(jax.vmap(jax.grad(body), in_axes=(0, 0)))
      g = f(jnp.arange(3.) / 3, r)
      return g, r[...]
    self.assertTransparent(prog)

  def test_nested_vmap(self):
    def prog(R):
      @R
      def body(y, r):
        out = jnp.sin(y) * r[...]
        r[...] = r[...] * y
        return out
      def f(y, x):
        r = jax.new_ref(x)
        return body(y, r) + r[...]
      ys = jnp.arange(6.).reshape(2, 3) / 6
      xs = jnp.ones((2, 3))
      return jax.vmap(jax.vmap(jax.grad(f, argnums=(0, 1))))(ys, xs)
    self.assertTransparent(prog)

  def test_unbatched_closed_over_ref_written_in_vmap_is_rejected_as_without_remat(self):
    # JAX refuses to write into an unbatched ref closed over by the vmapped
    # function; remat must give the same error, not an answer or a crash.
    def prog(R):
      r = jax.new_ref(2.)
      @R
      def body(y):
        out = y * r[...]
        r[...] += 1.
        return out
      return jax.vmap(body)(jnp.arange(3.))
    with self.assertRaisesRegex(Exception, "unbatched array reference") as plain:
      prog(no_remat)
    with self.assertRaisesRegex(Exception, "unbatched array reference") as rem:
      prog(jax.remat)
    self.assertIs(type(rem.exception), type(plain.exception))


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
