"""The import gate and the feature probes of `_compat`."""
import inspect
from unittest import mock

from absl.testing import absltest
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax._src import ad_checkpoint as ac
from jax._src import custom_derivatives
from jax._src import test_util as jtu
from jax._src.interpreters import partial_eval as pe
from jax._src.state import discharge as state_discharge

import jax_remat_refs  # noqa: F401  (activates the patch)
from jax_remat_refs import _compat
from jax_remat_refs import _fixes


class VersionGateTest(jtu.JaxTestCase):

  def test_release_parsing(self):
    self.assertEqual(_compat._release("0.12.0.1"), (0, 12, 0, 1))
    self.assertEqual(_compat._release("0.10.2.dev20261130+abc"), (0, 10, 2))
    self.assertLess(_compat._release("0.9.2"), _compat._release("0.10.0"))
    self.assertLess(_compat._release("0.7.1"), _compat._release("0.7.2"))
    self.assertGreater(_compat._release("0.12.1"), _compat._release("0.12.0.1"))

  def test_older_than_supported_is_refused(self):
    with mock.patch.object(_compat, "JAX_VERSION", "0.7.1"):
      with self.assertRaisesRegex(ImportError, "0.7.2 and newer.*0.7.1"):
        _compat.check_jax_version()

  def test_newer_than_tested_warns(self):
    with mock.patch.object(_compat, "JAX_VERSION", "0.13.0"):
      with self.assertWarnsRegex(_compat.UntestedJaxWarning,
                                 "0.7.2 to 0.12.0.1.*0.13.0"):
        _compat.check_jax_version()

  def test_tested_range_imports_silently(self):
    for v in ("0.7.2", "0.8.3", "0.9.0.1", "0.10.0", "0.11.1", "0.12.0.1"):
      with mock.patch.object(_compat, "JAX_VERSION", v):
        _compat.check_jax_version()  # neither raises nor warns (-W error)


class FeatureProbeTest(jtu.JaxTestCase):

  def test_dce_rule_probe_reads_the_rule(self):
    takes = "live_ins" in inspect.signature(_fixes.UPSTREAM_DCE).parameters
    self.assertEqual(_compat.DCE_RULE_KEEPS_EFFECTS, takes)
    # Only an old-form rule is replaced.
    self.assertEqual(pe.dce_rules[ac.remat_p] is _fixes.UPSTREAM_DCE, takes)


def remat_around_jit_closing_over_an_array(rm):
  # jax 0.7.x: the jit's effects named the wrong input (index counted past
  # its constvar, the closed-over array), so the remat lost the write to r.
  c = jnp.arange(3.)
  r = jax.new_ref(jnp.zeros(3))
  s = jax.new_ref(jnp.ones(3))
  def blk(x, r, s):
    r[...] = r[...] + x * c
    return x * s[...]
  y = rm(jax.jit(blk))(jnp.full(3, 2.), r, s)
  jaxpr = jax.make_jaxpr(jax.jit(blk))(jnp.ones(3), r, s)  # traces: no error
  return y, r[...], len(jaxpr.eqns)


def remat_around_while_writing_a_ref(rm):
  # jax 0.7.x - 0.9.x: value form discharges the loop before AD; JAX's
  # `while` JVP failed on the discharged cond jaxpr (unknown arg names).
  r = jax.new_ref(jnp.zeros(()))
  def f(x):
    def body(c):
      i, h = c
      r[...] = r[...] + lax.stop_gradient(h)
      return i + 1, jnp.sin(h)
    return lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1]
  y, t = jax.jvp(rm(f), (0.5,), (1.,))
  return y, t, r[...]


class JaxRuleFixesTest(jtu.JaxTestCase):

  def test_remat_around_jit_closing_over_an_array(self):
    self.assertAllClose(remat_around_jit_closing_over_an_array(jax.remat),
                        remat_around_jit_closing_over_an_array(lambda f: f))

  def test_jvp_of_remat_around_while_writing_a_ref(self):
    got = remat_around_while_writing_a_ref(jax.remat)
    self.assertAllClose(got, remat_around_while_writing_a_ref(lambda f: f))
    self.assertAllClose(got[1], jnp.cos(jnp.sin(0.5)) * jnp.cos(0.5))

  """Fixed JAX rules that programs without refs reach too (JaxTestCase runs
  with jax_enable_checks)."""

  def test_hessian_of_remat_around_scan_in_remat(self):
    # jax 0.10.x: the closed_call that scan's partial eval makes is retraced
    # under vmap with a `name` its type check rejected (TypeError).
    w = jnp.array([0.3, 0.2, -0.4, 0.5])
    def f(rm):
      def loss(x):
        def loop(i, h):
          def blk(h):
            def step(h, xs):
              i, x = xs
              return jnp.tanh(jnp.sin(h) * w[i] + x), ()
            h, _ = lax.scan(rm(step), h, (jnp.arange(4), w))
            return h
          return rm(jax.jit(blk))(h)
        return jnp.sum(jnp.sin(lax.fori_loop(0, 2, loop, x)))
      return rm(loss)
    x = jnp.linspace(-0.5, 0.5, 4)
    self.assertAllClose(jax.hessian(f(jax.remat))(x),
                        jax.hessian(f(lambda g: g))(x), rtol=1e-5, atol=1e-6)

  def test_custom_jvp_making_its_own_ref_compiles(self):
    # Every release: `custom_jvp_call` had no discharge rule, so a custom_jvp
    # function that makes a ref inside could not be compiled at all
    # (NotImplementedError under jit, without remat too). The rule keeps the
    # function's JVP rule (3, not the primal's cos).
    @jax.custom_jvp
    def h(x):
      r = jax.new_ref(x)
      r[...] = jnp.sin(r[...])
      return r[...]
    h.defjvp(lambda xs, ts: (h(xs[0]), 3. * ts[0]))
    twice = lambda x: lax.fori_loop(0, 2, lambda i, c: h(c), x)
    self.assertAllClose(jax.jit(h)(.5), np.sin(.5))
    self.assertAllClose(jax.grad(jax.jit(h))(.5), 3.)
    self.assertAllClose(jax.jit(twice)(.5), np.sin(np.sin(.5)))
    self.assertAllClose(jax.jit(jax.grad(twice))(.5), 9.)

  def test_upstream_behavior_removes_the_added_discharge_rule(self):
    rules = state_discharge._discharge_rules
    prim = custom_derivatives.custom_jvp_call_p
    self.assertEqual(rules.get(prim) is _fixes.custom_jvp_call_discharge,
                     _compat.CUSTOM_JVP_DISCHARGE_MISSING)
    with jax_remat_refs.upstream_behavior():
      self.assertIsNot(rules.get(prim), _fixes.custom_jvp_call_discharge)
      self.assertEqual(prim in rules,
                       not _compat.CUSTOM_JVP_DISCHARGE_MISSING)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
