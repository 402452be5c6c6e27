"""Control flow (cond, while_loop, fori_loop, scan) with refs, remat around and
within. Every program is compared with the same program without remat
(`no_remat` in place of `jax.remat`)."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
from jax._src import test_util as jtu

from tests.transparency import TransparencyMixin


def maybe_jit(f, jit):
  return jax.jit(f) if jit else f


class ControlFlowRematRefTest(TransparencyMixin, jtu.JaxTestCase):

  # --- cond -------------------------------------------------------------------

  @parameterized.parameters(False, True)
  def test_cond_writes_closed_over_ref(self, jit):
    def prog(R):
      r = jax.new_ref(1.)
      @R
      def f(x, p):
        def yes():
          r[...] = r[...] + lax.stop_gradient(x)
          return jnp.sin(x) * r[...]
        def no():
          r[...] = r[...] * 2.
          return jnp.cos(x) * r[...]
        return lax.cond(p, yes, no) * r[...]
      g = maybe_jit(jax.grad(f), jit)
      g1 = g(0.7, True)
      v1 = r[...]
      g2 = g(0.7, False)
      return g1, v1, g2, r[...]
    self.assertTransparent(prog)

  def test_cond_reads_ref_argument(self):
    def prog(R):
      @R
      def f(x, r):
        out = lax.cond(x > 0, lambda: jnp.sin(x) * r[...],
                       lambda: x * r[...])
        r[...] = r[...] + 1.
        return out * r[...]
      r = jax.new_ref(2.)
      g1 = jax.grad(f)(0.5, r)
      g2 = jax.grad(f)(-0.5, r)
      return g1, g2, r[...]
    self.assertTransparent(prog)

  def test_cond_with_differentiated_ref(self):
    def prog(R):
      @R
      def body(x, r, p):
        def yes():
          r[...] = r[...] * x
        def no():
          r[...] = r[...] + 1.
        lax.cond(p, yes, no)
        return jnp.sin(r[...])
      def f(x, p):
        r = jax.new_ref(x * 2.)
        return body(x, r, p) + r[...]
      return jax.grad(f)(0.3, True), jax.grad(f)(0.3, False)
    self.assertTransparent(prog)

  # --- while_loop (forward only: JAX cannot reverse-differentiate it) --------

  @parameterized.parameters(False, True)
  def test_while_loop_in_remat_forward(self, jit):
    def prog(R):
      r = jax.new_ref(0.)
      @R
      def f(x):
        def body(c):
          i, acc = c
          r[...] += x
          return i + 1, acc + r[...]
        return lax.while_loop(lambda c: c[0] < 4, body, (0, x))[1]
      return maybe_jit(f, jit)(1.5), r[...]
    out, ref = self.assertTransparent(prog)
    # hand-computed: r = 1.5, 3, 4.5, 6 added to 1.5
    self.assertAllClose(out, 1.5 + 1.5 + 3. + 4.5 + 6.)
    self.assertAllClose(ref, 6.)

  def test_remat_in_while_body_forward_and_jvp(self):
    def prog(R):
      r = jax.new_ref(1.)
      @R
      def step(acc):
        v = r[...]
        r[...] = v + 0.5
        return acc * jnp.cos(v)
      def f(x):
        return lax.while_loop(lambda c: c[0] < 3,
                              lambda c: (c[0] + 1, step(c[1])), (0, x))[1]
      out = f(1.2)
      tangent = jax.jvp(f, (1.2,), (1.,))[1]
      return out, tangent, r[...]
    self.assertTransparent(prog)

  # --- fori_loop ------------------------------------------------------------------

  @parameterized.parameters(False, True)
  def test_remat_around_fori_loop(self, jit):
    def prog(R):
      r = jax.new_ref(1.)
      @R
      def f(x):
        def body(i, acc):
          v = r[...]
          r[...] = v * 1.5
          return acc * jnp.sin(x * v)
        return lax.fori_loop(0, 3, body, x)
      return maybe_jit(jax.grad(f), jit)(0.3), r[...]
    self.assertTransparent(prog)

  def test_remat_inside_fori_loop(self):
    def prog(R):
      r = jax.new_ref(1.)
      @R
      def step(acc, x):
        v = r[...]
        r[...] = v * 1.5
        return acc * jnp.sin(x * v)
      def f(x):
        return lax.fori_loop(0, 3, lambda i, acc: step(acc, x), x)
      return jax.grad(f)(0.3), r[...]
    self.assertTransparent(prog)

  # --- scan with refs as consts -------------------------------------------

  @parameterized.parameters(False, True)
  def test_remat_scan_body_closed_over_ref(self, jit):
    def prog(R):
      r = jax.new_ref(1.)
      @R
      def body(c, x):
        v = r[...]
        r[...] = v + lax.stop_gradient(x)
        return c * jnp.cos(x * v), c
      def f(c, xs):
        return lax.scan(body, c, xs)[0]
      g = maybe_jit(jax.grad(f, argnums=(0, 1)), jit)(1.1, jnp.arange(3.) / 4)
      return g, r[...]
    self.assertTransparent(prog)

  def test_remat_around_scan_closed_over_ref(self):
    def prog(R):
      r = jax.new_ref(1.)
      @R
      def f(c, xs):
        def body(c, x):
          v = r[...]
          r[...] = v + lax.stop_gradient(x)
          return c * jnp.cos(x * v), c
        return lax.scan(body, c, xs)[0]
      return jax.grad(f, argnums=(0, 1))(1.1, jnp.arange(3.) / 4), r[...]
    self.assertTransparent(prog)

  def test_remat_around_scan_ref_argument(self):
    def prog(R):
      @R
      def f(c, xs, r):
        def body(c, x):
          v = r[...]
          r[...] = v * 2. + lax.stop_gradient(x)
          return c * jnp.sin(x + v), None
        return lax.scan(body, c, xs)[0]
      r = jax.new_ref(0.5)
      return jax.grad(f, argnums=(0, 1))(1.1, jnp.arange(3.) / 4, r), r[...]
    self.assertTransparent(prog)

  def test_remat_scan_body_with_differentiated_ref(self):
    def prog(R):
      def f(x):
        r = jax.new_ref(x)
        @R
        def body(c, w):
          v = r[...]
          r[...] = v * w
          return c + jnp.sin(v), None
        c, _ = lax.scan(body, 0., jnp.array([1.5, 2., 0.5]))
        return c + r[...]
      return jax.value_and_grad(f)(0.4)
    self.assertTransparent(prog)

  def test_remat_around_and_within_scan(self):
    def prog(R):
      r = jax.new_ref(jnp.ones(2))
      @R
      def body(c, x):
        v = r[...]
        r[...] = v * 0.5 + lax.stop_gradient(x)
        return c * jnp.tanh(v * x).sum(), None
      @R
      def f(c, xs):
        return lax.scan(body, c, xs)[0]
      xs = jnp.arange(6.).reshape(3, 2) / 6
      return jax.grad(f, argnums=(0, 1))(0.9, xs), r[...]
    self.assertTransparent(prog)

  def test_scan_ref_accumulates_stopped_values(self):
    def prog(R):
      acc = jax.new_ref(jnp.zeros(3))
      @R
      def body(c, x):
        h = jnp.sin(c * x)
        acc[...] += lax.stop_gradient(h)
        return h * acc[...], None
      def f(c0, xs):
        return lax.scan(body, c0, xs)[0].sum()
      g = jax.grad(f, argnums=(0, 1))(jnp.ones(3), jnp.arange(6.).reshape(2, 3))
      return g, acc[...]
    self.assertTransparent(prog)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
