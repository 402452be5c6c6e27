"""jax.custom_vjp / jax.custom_jvp functions that read or write refs inside a
remat body. Every program is compared with the same program without remat
(`no_remat` in place of `jax.remat`)."""

import warnings

from absl.testing import absltest
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax._src import test_util as jtu

from jax_remat_refs import RematRefWarning
from tests.transparency import TransparencyMixin, no_remat


class CustomRuleTestCase(TransparencyMixin, jtu.JaxTestCase):

  def assertTransparent(self, prog, warnings_filter="ignore", **kwargs):
    # A custom rule whose primal touches a ref runs without remat, with a
    # RematRefWarning (test_custom_rule_on_ref_warns); the others remat.
    # warnings_filter="error": the remat must not fall back.
    with warnings.catch_warnings():
      warnings.simplefilter(warnings_filter, RematRefWarning)
      return super().assertTransparent(prog, **kwargs)


class CustomVJPRefTest(CustomRuleTestCase):

  def test_custom_rule_on_ref_warns(self):
    s = jax.new_ref(2.)
    @jax.custom_vjp
    def h(x):
      return x * s[...]
    h.defvjp(lambda x: (h(x), s[...]), lambda sv, g: (g * sv,))
    g = jax.remat(lambda x: jnp.sin(h(x)))
    with self.assertWarnsRegex(RematRefWarning, "not rematerialized"):
      got = jax.grad(g)(1.)
    self.assertAllClose(got, 2. * jnp.cos(2.))

  def test_custom_rule_without_refs_in_primal_remats(self):
    # The backward rule writes a ref; the primal does not touch it: value
    # form applies, no warning, and the rematerialization is real.
    stash = jax.new_ref(0.)
    @jax.custom_vjp
    def tap(x):
      return x
    def bwd(_, g):
      stash[...] += g
      return (g,)
    tap.defvjp(lambda x: (x, None), bwd)
    g = jax.remat(lambda x: jnp.sin(tap(x * 2.)) * 3.)
    with warnings.catch_warnings():
      warnings.simplefilter("error", RematRefWarning)
      jaxpr = jax.make_jaxpr(jax.grad(g))(1.)
      got = jax.grad(g)(1.)
    self.assertIn("remat2", str(jaxpr))
    self.assertAllClose(got, 6. * jnp.cos(2.))
    self.assertAllClose(stash[...], 3. * jnp.cos(2.))

  def _stash_program(self, also_reads_a_ref):
    # A custom_vjp takes a ref and writes the cotangent into it in its
    # backward rule; its primal does not touch the ref.
    @jax.custom_vjp
    def stash_grads(grads_ref, x):
      return x
    def fwd(grads_ref, x):
      return x, grads_ref
    def bwd(grads_ref, g):
      grads_ref[...] = g
      return None, g
    stash_grads.defvjp(fwd, bwd)
    scale = jax.new_ref(3.)
    def prog(R):
      @R
      def f(grads_ref, x):
        y = jnp.sin(stash_grads(grads_ref, jnp.sin(x)))
        return y * scale[...] if also_reads_a_ref else y
      grads_ref = jax.new_ref(0.)
      return jax.grad(f, 1)(grads_ref, 1.), grads_ref[...]
    return prog

  def test_custom_vjp_making_its_own_ref_in_a_loop(self):
    # Refs a custom function makes and uses inside are its own: the body is
    # pure from outside and is bound as it is (jax 0.10.0's discharge of
    # such a body raised "AD after discharge").
    @jax.custom_vjp
    def double(x):
      r = jax.new_ref(x)
      r[...] = r[...] * 2.
      return jax.freeze(r)
    double.defvjp(lambda x: (double(x), None), lambda _, g: (2. * g,))
    def prog(R):
      @jax.jit
      @R
      def f(x):
        return lax.fori_loop(0, 3, lambda i, x: jnp.sin(double(x)), x)
      y, f_vjp = jax.vjp(f, 0.5)
      return y, f_vjp(1.)
    self.assertTransparent(prog, warnings_filter="error")

  def _sin_with_refs_inside(self):
    # sin, with the custom derivative x + 1 (not cos x); both its primal and
    # its fwd make refs of their own.
    @jax.custom_vjp
    def h(x):
      r = jax.new_ref(x)
      r[...] = jnp.sin(r[...])
      return r[...]
    def h_fwd(x):
      r = jax.new_ref(x)
      r[...] += 1.
      return h(x), r[...]
    h.defvjp(h_fwd, lambda res, g: (g * res,))
    return h

  def test_custom_vjp_making_refs_in_a_body_making_refs(self):
    # JAX's discharge of the custom call (its refs are its own) replaces it
    # by its primal: value form lost the custom rule (gradient 3.17, the
    # derivative of sin). Now such a body runs without remat.
    want = 1.7 * np.cos(.7) - np.sin(.7) ** 2 + 3.
    self.assertTransparent(self._body_making_refs_prog(), expected=(want, want))

  def test_custom_vjp_making_refs_in_a_body_making_refs_warns(self):
    with self.assertWarnsRegex(RematRefWarning, "takes or makes refs"):
      self._body_making_refs_prog()(jax.remat)

  def _body_making_refs_prog(self):
    h = self._sin_with_refs_inside()
    def prog(R):
      def f(x):
        k = jax.new_ref(x * 3.)
        return h(x) * jnp.cos(x) + k[...]
      return jax.grad(R(f))(.7), jax.jit(jax.grad(R(f)))(.7)
    return prog

  def test_custom_vjp_whose_fwd_makes_refs(self):
    # Only the custom function's own refs (under grad the fwd's ref is in
    # the differentiated body, which then runs without remat): f' = (x + 1)
    # cos x - sin x sin x with the custom derivative x + 1 of h = sin, and
    # f'' = cos x - 2 (x + 1) sin x - sin x cos x.
    h = self._sin_with_refs_inside()
    def prog(R):
      f = R(lambda x: h(x) * jnp.cos(x))
      return jax.grad(f)(.7), jax.grad(jax.grad(f))(.7)
    c, s = np.cos(.7), np.sin(.7)
    self.assertTransparent(
        prog, expected=(1.7 * c - s * s, c - 2. * 1.7 * s - s * c))

  def test_ref_passed_to_custom_vjp_stays_a_ref(self):
    # Only the backward rule writes it: value form leaves it a ref, the
    # remat stays (no warning), and the backward pass writes it once.
    prog = self._stash_program(also_reads_a_ref=False)
    g, stash = self.assertTransparent(prog, warnings_filter="error")
    self.assertAllClose(stash, jnp.cos(jnp.sin(1.)))
    self.assertAllClose(g, jnp.cos(jnp.sin(1.)) * jnp.cos(1.))

  def test_ref_passed_to_custom_vjp_in_a_body_that_reads_refs_warns(self):
    # The body's other refs are discharged, which would hand the custom_vjp
    # a value: the remat runs as if undecorated, with a warning.
    prog = self._stash_program(also_reads_a_ref=True)
    expected = prog(no_remat)
    with self.assertWarnsRegex(RematRefWarning, "not rematerialized"):
      actual = prog(jax.remat)
    self.assertAllClose(actual, expected)

  def test_custom_vjp_reads_closed_over_ref_body_writes_it(self):
    def prog(R):
      s = jax.new_ref(2.)
      @jax.custom_vjp
      def f(x):
        return jnp.sin(x) * s[...]
      def fwd(x):
        return f(x), (jnp.cos(x), s[...])
      def bwd(res, g):
        c, sv = res
        return (g * c * sv,)
      f.defvjp(fwd, bwd)
      @R
      def g(x):
        y = f(x)
        s[...] = s[...] + 1.
        return y * s[...] + f(x)
      return jax.grad(g)(1.), s[...]
    self.assertTransparent(prog)

  def test_custom_vjp_fwd_reads_closed_over_ref_body_writes_it_jit(self):
    def prog(R):
      s = jax.new_ref(2.)
      @jax.custom_vjp
      def h(x):
        return x * s[...]
      def fwd(x):
        return h(x), s[...]
      def bwd(sv, g):
        return (g * sv,)
      h.defvjp(fwd, bwd)
      @R
      def g(x):
        y = h(x)
        s[...] = s[...] + 1.
        return y * s[...] + h(x)
      return jax.jit(jax.grad(g))(1.), s[...]
    # d/dx (2x * 3 + 3x) = 9; the ref is incremented once.
    g, s = self.assertTransparent(prog)
    self.assertAllClose(g, 9.)
    self.assertAllClose(s, 3.)

  def test_custom_vjp_fwd_writes_ref_argument(self):
    def prog(R):
      @jax.custom_vjp
      def f(x, r):
        r[...] += 1.
        return x * r[...]
      def fwd(x, r):
        r[...] += 1.
        v = r[...]
        return x * v, v
      def bwd(v, g):
        return (g * v, None)
      f.defvjp(fwd, bwd)
      r = jax.new_ref(1.)
      @R
      def g(x, r):
        return jnp.sin(f(x, r)) * r[...]
      return jax.grad(g)(0.5, r), r[...]
    self.assertTransparent(prog)

  def test_stash_gradient_into_closed_over_ref(self):
    def prog(R):
      stash = jax.new_ref(0.)
      @jax.custom_vjp
      def tap(x):
        return x
      def fwd(x):
        return x, None
      def bwd(_, g):
        stash[...] += g
        return (g,)
      tap.defvjp(fwd, bwd)
      @R
      def g(x):
        return jnp.sin(tap(x * 2.)) * 3.
      return jax.grad(g)(1.), stash[...]
    # the stash receives d/du of 3 sin(u) at u = 2: 3 cos 2
    g, stash = self.assertTransparent(prog)
    self.assertAllClose(stash, 3. * jnp.cos(2.))

  def test_stash_gradient_into_closed_over_ref_under_jit(self):
    def prog(R):
      stash = jax.new_ref(jnp.zeros(3))
      @jax.custom_vjp
      def tap(x):
        return x
      def fwd(x):
        return x, None
      def bwd(_, g):
        stash[...] += g
        return (g,)
      tap.defvjp(fwd, bwd)
      @R
      def g(x):
        return jnp.sum(jnp.tanh(tap(x * x)))
      gr = jax.jit(jax.grad(g))(jnp.arange(3.) / 3)
      return gr, stash[...]
    self.assertTransparent(prog)

  def test_stash_gradient_into_ref_argument(self):
    # The ref reaches the backward rule as a custom_vjp residual; its writes
    # happen in the backward pass and must land in the caller's ref.
    def prog(R):
      @jax.custom_vjp
      def tap(x, r):
        return x
      def fwd(x, r):
        return x, r
      def bwd(r, g):
        r[...] += g
        return (g, None)
      tap.defvjp(fwd, bwd)
      @R
      def g(x, r):
        return jnp.sin(tap(x * 2., r)) * 3.
      stash = jax.new_ref(0.)
      return jax.grad(g)(1., stash), stash[...]
    self.assertTransparent(prog)

  def test_custom_vjp_residual_ref_read_in_forward_too(self):
    def prog(R):
      @jax.custom_vjp
      def scale(x, r):
        return x * r[...]
      def fwd(x, r):
        return x * r[...], (r, r[...])
      def bwd(res, g):
        r, v = res
        r[...] += lax.stop_gradient(g)
        return (g * v, None)
      scale.defvjp(fwd, bwd)
      @R
      def g(x, r):
        out = scale(jnp.sin(x), r)
        return out * r[...]
      r = jax.new_ref(1.5)
      return jax.grad(g)(0.4, r), r[...]
    self.assertTransparent(prog)


class CustomJVPRefTest(CustomRuleTestCase):

  def test_custom_jvp_reads_ref_argument(self):
    def prog(R):
      @jax.custom_jvp
      def f(x, r):
        return jnp.sin(x) * r[...]
      @f.defjvp
      def f_jvp(primals, tangents):
        x, r = primals
        xd, _ = tangents
        return f(x, r), jnp.cos(x) * r[...] * xd
      @R
      def g(x, r):
        y = f(x, r)
        r[...] = r[...] * 3.
        return y + f(x, r)
      r = jax.new_ref(2.)
      return jax.grad(g)(1., r), r[...]
    self.assertTransparent(prog)

  def test_custom_jvp_rule_reads_closed_over_ref_body_writes_it(self):
    # The jvp rule reads the ref through its Python closure; under remat the
    # JVP of the body then takes the same ref twice (the body's closed-over
    # input and the rule's), and both must see the write in between.
    def prog(R):
      s = jax.new_ref(2.)
      @jax.custom_jvp
      def f(x):
        return x * s[...]
      @f.defjvp
      def f_jvp(primals, tangents):
        return f(primals[0]), s[...] * tangents[0]
      @R
      def g(x):
        y = f(x)
        s[...] = s[...] * 3.
        return y + f(x)
      return jax.grad(g)(1.), s[...]
    # d/dx (x*2 + x*6) = 8; the ref is multiplied by 3 once.
    g, s = self.assertTransparent(prog)
    self.assertAllClose(g, 8.)
    self.assertAllClose(s, 6.)

  def test_custom_jvp_rule_reads_closed_over_ref_read_only(self):
    def prog(R):
      s = jax.new_ref(2.)
      @jax.custom_jvp
      def f(x):
        return jnp.sin(x) * s[...]
      @f.defjvp
      def f_jvp(primals, tangents):
        x, = primals
        return f(x), jnp.cos(x) * s[...] * tangents[0]
      @R
      def g(x):
        return f(x) * f(x * 2.)
      # (jit of this program fails in JAX without remat too: no state
      # discharge rule for custom_jvp_call)
      return jax.grad(g)(0.3), s[...]
    self.assertTransparent(prog)

  def test_custom_jvp_writes_ref_in_primal(self):
    def prog(R):
      counter = jax.new_ref(0.)
      @jax.custom_jvp
      def f(x):
        counter[...] += 1.
        return jnp.sin(x)
      @f.defjvp
      def f_jvp(primals, tangents):
        x, = primals
        return f(x), jnp.cos(x) * tangents[0]
      @R
      def g(x):
        return f(x) * counter[...]
      return jax.grad(g)(0.3), counter[...]
    self.assertTransparent(prog)

  def test_custom_jvp_making_its_own_ref_in_a_while_loop(self):
    # A body with other ref effects runs without remat here, and its loop
    # (a while: the trip count is read from a ref) was compiled by itself;
    # JAX had no discharge rule for such a function (NotImplementedError,
    # also under jit without remat). Fuzz generator 1, seed 3000449.
    @jax.custom_jvp
    def h(x):
      r = jax.new_ref(x)
      r[...] = jnp.tanh(r[...])
      return r[...]
    h.defjvp(lambda xs, ts: (h(xs[0]), 3. * ts[0]))
    def prog(R, jit):
      n = jax.new_ref(2)
      acc = jax.new_ref(0.)
      @R
      def g(x):
        def body(i, c):
          acc[...] += lax.stop_gradient(c)
          return h(c) * x
        return lax.fori_loop(0, n[...], body, x)
      jvp = lambda x: jax.jvp(g, (x,), (1.,))
      y, y_dot = (jax.jit(jvp) if jit else jvp)(.4)
      return y, y_dot, acc[...]
    c1 = np.tanh(.4) * .4
    c1_dot = 3. * .4 + np.tanh(.4)
    want = (np.tanh(c1) * .4, 3. * c1_dot * .4 + np.tanh(c1), .4 + c1)
    for jit in (False, True):
      self.assertTransparent(lambda R: prog(R, jit), expected=want)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
