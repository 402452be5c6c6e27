# Copyright 2026 The JAX Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     https://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Tests of jax.checkpoint / jax.remat on functions that use mutable array refs."""

import warnings

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax._src import config
from jax._src import test_util as jtu
from jax._src.ad_checkpoint import saved_residuals

config.parse_flags_with_absl()

cp = jax.checkpoint_policies


def _no_remat(fun, **_):
  """The oracle: the same program with the remat decorator taken away."""
  return fun


def _seed(remat, **kw):
  def f(y, x_ref):
    out = y * x_ref[...]
    x_ref[...] += 1
    return out
  return remat(f, **kw)


class _RematOracleTestCase(jtu.JaxTestCase):

  def check(self, prog):
    """Runs `prog(remat)` with jax.remat and without it; returns the former.

    `prog` builds its refs itself, so each run starts from the same state,
    and returns everything observable: outputs, gradients, final ref values.
    """
    expected = prog(_no_remat)
    actual = prog(jax.remat)
    self.assertAllClose(actual, expected)
    return actual


# -- core --


class RematRefsTest(_RematOracleTestCase):

  def test_seed_grad(self):
    def prog(remat):
      x_ref = jax.new_ref(1.)
      return jax.grad(_seed(remat))(1., x_ref), x_ref[...]
    g, x = self.check(prog)
    # d/dy (y * x) at x = 1 (the value at entry); one increment: 2.
    self.assertAllClose(g, 1.)
    self.assertAllClose(x, 2.)

  def test_seed_vjp(self):
    def prog(remat):
      x_ref = jax.new_ref(3.)
      out, f_vjp = jax.vjp(lambda y: _seed(remat)(y, x_ref), 2.)
      after_fwd = x_ref[...]
      (ct,) = f_vjp(1.)
      return out, ct, after_fwd, x_ref[...]
    out, ct, after_fwd, after_bwd = self.check(prog)
    self.assertAllClose((out, ct, after_fwd, after_bwd), (6., 3., 4., 4.))

  def test_seed_linearize(self):
    def prog(remat):
      x_ref = jax.new_ref(3.)
      out, f_jvp = jax.linearize(lambda y: _seed(remat)(y, x_ref), 2.)
      t = f_jvp(1.)
      return out, t, x_ref[...]
    self.assertAllClose(self.check(prog), (6., 3., 4.))

  def test_seed_value_and_grad(self):
    def prog(remat):
      x_ref = jax.new_ref(2.)
      (v, g) = jax.value_and_grad(_seed(remat))(5., x_ref)
      return v, g, x_ref[...]
    self.assertAllClose(self.check(prog), (10., 2., 3.))

  def test_jit_outside(self):
    def prog(remat):
      x_ref = jax.new_ref(1.)
      g = jax.jit(jax.grad(_seed(remat)))(1., x_ref)
      return g, x_ref[...]
    self.assertAllClose(self.check(prog), (1., 2.))

  def test_jit_inside(self):
    def prog(remat):
      @jax.jit
      def body(y, r):
        out = jnp.sin(y) * r[...]
        r[...] = r[...] * 2.
        return out * r[...]
      x_ref = jax.new_ref(1.5)
      g = jax.grad(remat(body))(0.3, x_ref)
      return g, x_ref[...]
    g, x = self.check(prog)
    self.assertAllClose(g, jnp.cos(0.3) * 1.5 * 3.)  # cos(y) * r0 * 2 r0
    self.assertAllClose(x, 3.)

  def test_vmap_per_example_ref(self):
    def prog(remat):
      def body(y, r):
        out = jnp.sin(y * r[...])
        r[...] = r[...] + 1.
        return out * r[...]
      r = jax.new_ref(jnp.array([1., 2., 3.]))
      ys = jnp.array([0.1, 0.2, 0.3])
      g = jax.vmap(jax.grad(remat(body)), in_axes=(0, 0))(ys, r)
      return g, r[...]
    g, r = self.check(prog)
    r0 = np.array([1., 2., 3.])
    ys = np.array([0.1, 0.2, 0.3])
    self.assertAllClose(g, np.cos(ys * r0) * r0 * (r0 + 1.))
    self.assertAllClose(r, r0 + 1.)

  def test_nested_remats_inner_writes_outer_reads_after(self):
    def prog(remat):
      def inner(y, r):
        out = jnp.sin(y) * r[...]
        r[...] += 1.
        return out
      def outer(y, r):
        a = remat(inner)(y, r)
        return a * r[...]
      r = jax.new_ref(2.)
      v, g = jax.value_and_grad(remat(outer))(0.5, r)
      return v, g, r[...]
    v, g, r = self.check(prog)
    self.assertAllClose(g, jnp.cos(0.5) * 2. * 3.)
    self.assertAllClose(r, 3.)

  @parameterized.named_parameters(
      ('nothing_saveable', cp.nothing_saveable),
      ('dots_saveable', cp.dots_saveable),
      ('everything_saveable', cp.everything_saveable),
      ('save_name_of_read', cp.save_only_these_names('v')),
      ('save_other_name', cp.save_only_these_names('h')),
  )
  def test_policy(self, policy):
    def prog(remat):
      def body(w, r):
        v = checkpoint_name(r[...], 'v')
        h = checkpoint_name(jnp.tanh(w @ v), 'h')
        r[...] = lax.stop_gradient(v * 0.5 + 1.)
        return jnp.sum(h * r[...])
      r = jax.new_ref(jnp.arange(6., dtype=jnp.float32).reshape(2, 3) / 6.)
      w = jnp.array([[0.5, -1.], [2., 0.25]])
      v, g = jax.value_and_grad(remat(body, policy=policy))(w, r)
      return v, g, r[...]
    self.check(prog)

  def test_closed_over_refs(self):
    def prog(remat):
      scale = jax.new_ref(2.)
      calls = jax.new_ref(0.)
      def f(y):
        calls[...] += 1.
        out = jnp.sin(y) * scale[...] * calls[...]
        scale[...] = scale[...] * 3.
        return out * scale[...]
      g = jax.grad(remat(f))(0.7)
      return g, scale[...], calls[...]
    g, scale, calls = self.check(prog)
    self.assertAllClose(g, jnp.cos(0.7) * 2. * 1. * 6.)
    self.assertAllClose((scale, calls), (6., 1.))

  def test_same_ref_passed_twice(self):
    # JAX rejects aliased ref arguments unless the check is switched off;
    # then both names see every write made through either.
    def prog(remat):
      def f(y, a, b):
        out = y * a[...]
        b[...] += 1.
        return out * a[...]
      r = jax.new_ref(2.)
      with config.mutable_array_checks(False):
        g = jax.grad(remat(f))(1.5, r, r)
      return g, r[...]
    self.assertAllClose(self.check(prog), (2. * 3., 3.))

  def test_refs_created_inside_body_only(self):
    def prog(remat):
      def f(y):
        r = jax.new_ref(jnp.zeros(3))
        r[0] = jnp.sin(y)
        r[1] = r[0] * y
        r[2] = r[1] + r[0] ** 2
        return jnp.sum(r[...] * jnp.array([1., 2., 3.]))
      return jax.value_and_grad(remat(f))(0.4), jax.jit(jax.grad(remat(f)))(0.4)
    self.check(prog)

  def test_prevent_cse_tuple(self):
    def prog(remat):
      x_ref = jax.new_ref(1.)
      g = jax.grad(_seed(remat, prevent_cse=(True, False)))(1., x_ref)
      return g, x_ref[...]
    self.assertAllClose(self.check(prog), (1., 2.))

  def test_hessian_of_remat_reading_ref(self):
    def prog(remat):
      r = jax.new_ref(jnp.array([1., 2.]))
      def f(y):
        return jnp.sum(jnp.sin(y) ** 2 * r[...])
      return jax.hessian(remat(f))(jnp.array([0.3, -0.4])), r[...]
    self.check(prog)

  def test_grad_of_grad_of_remat_writing_ref(self):
    # (jax.hessian vmaps the inner gradient, and a write into a ref closed
    # over by a vmapped function fails with or without remat.)
    def prog(remat):
      r = jax.new_ref(2.)
      def f(y):
        out = y ** 3 * r[...]
        r[...] += 1.
        return out
      return jax.grad(jax.grad(remat(f)))(0.5), r[...]
    self.assertAllClose(self.check(prog), (6. * 0.5 * 2., 3.))

  def test_int_counter_ref(self):
    def prog(remat):
      count = jax.new_ref(jnp.int32(0))
      def f(y):
        count[...] += 1
        return jnp.sin(y) * count[...].astype(jnp.float32)
      g = jax.grad(remat(f))(0.2)
      g2 = jax.jit(jax.grad(remat(f)))(0.2)
      return g, g2, count[...]
    g, g2, count = self.check(prog)
    self.assertAllClose((g, g2), (jnp.cos(0.2), 2. * jnp.cos(0.2)))
    self.assertEqual(int(count), 2)

  def test_custom_vjp_touching_ref_runs_as_if_undecorated(self):
    def prog(remat):
      s = jax.new_ref(2.)
      @jax.custom_vjp
      def h(x):
        return jnp.sin(x) * s[...]
      def h_fwd(x):
        return h(x), (jnp.cos(x), s[...])
      def h_bwd(res, g):
        c, sv = res
        return (g * c * sv,)
      h.defvjp(h_fwd, h_bwd)
      def f(x):
        y = h(x)
        s[...] = s[...] + 1.
        return y * s[...]
      return jax.grad(remat(f))(0.6), s[...]
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # no warning without remat
      expected = prog(_no_remat)
    with self.assertWarnsRegex(UserWarning, r'^jax\.remat:'):
      actual = prog(jax.remat)
    self.assertAllClose(actual, expected)
    self.assertAllClose(actual, (jnp.cos(0.6) * 2. * 3., 3.))


class RematRefsLoopTest(_RematOracleTestCase):

  def test_scan_of_remat_step_writes_counter_and_stat(self):
    def prog(remat):
      count = jax.new_ref(jnp.int32(0))
      stat = jax.new_ref(0.)
      def step(h, x):
        count[...] += 1
        stat[...] = stat[...] + lax.stop_gradient(h) ** 2
        h = jnp.tanh(h * x + count[...].astype(jnp.float32) * 0.1)
        return h, stat[...] * h
      def loss(h0, xs):
        h, ys = lax.scan(remat(step), h0, xs)
        return h + jnp.sum(ys)
      xs = jnp.array([0.5, -1., 2., 0.3])
      v, g = jax.value_and_grad(loss, argnums=(0, 1))(0.2, xs)
      return v, g, count[...], stat[...]
    _, _, count, _ = self.check(prog)
    self.assertEqual(int(count), 4)

  def test_scan_of_remat_under_jit(self):
    def prog(remat):
      acc = jax.new_ref(jnp.zeros(2))
      def step(h, w):
        acc[...] = acc[...] + lax.stop_gradient(h)
        h = jnp.sin(h * w) + acc[...]
        return h, None
      @jax.jit
      def loss(ws):
        h, _ = lax.scan(remat(step), jnp.array([0.1, 0.2]), ws)
        return jnp.sum(h)
      g = jax.grad(loss)(jnp.array([[1., 2.], [0.5, -1.], [3., 0.2]]))
      return g, acc[...]
    self.check(prog)

  def test_fori_loop_in_remat_writes_loop_dependent_index(self):
    def prog(remat):
      buf = jax.new_ref(jnp.array([1., 2., 3.]))
      def f(w):
        def body(i, carry):
          buf[i] = buf[i] * 2. + 1.
          return jnp.sin(carry * w) + buf[i]
        return lax.fori_loop(0, 3, body, 0.5)
      v, g = jax.value_and_grad(remat(f))(0.8)
      return v, g, buf[...]
    _, _, buf = self.check(prog)
    self.assertAllClose(buf, jnp.array([3., 5., 7.]))

  @parameterized.named_parameters(('taken', 1), ('not_taken', 0))
  def test_cond_in_remat_writes_ref_in_one_branch(self, pred):
    def prog(remat):
      r = jax.new_ref(2.)
      def f(y, p):
        def bump():
          r[...] = r[...] * 3.
        lax.cond(p > 0, bump, lambda: None)
        return jnp.sin(y) * r[...]
      g = jax.grad(remat(f))(0.4, pred)
      return g, r[...]
    g, r = self.check(prog)
    r_new = 6. if pred else 2.
    self.assertAllClose((g, r), (jnp.cos(0.4) * r_new, r_new))

  def _stacked_loss(self, remat, in_ref):
    def loss(x, ws):
      w = jax.new_ref(ws) if in_ref else ws
      def layer(h, i):
        return jnp.tanh(h @ w[i]), None
      h, _ = lax.scan(remat(layer), x, jnp.arange(ws.shape[0]))
      return jnp.sum(h ** 2)
    return loss

  @parameterized.named_parameters(('eager', False), ('jit', True))
  def test_stacked_weights_in_ref_cost_no_more_residuals(self, jit):
    x = jnp.linspace(-1., 1., 8, dtype=jnp.float32).reshape(2, 4)
    ws = jnp.arange(5 * 16, dtype=jnp.float32).reshape(5, 4, 4) / 80.

    def residual_bytes(in_ref):
      loss = self._stacked_loss(jax.remat, in_ref)
      res = saved_residuals(jax.jit(loss) if jit else loss, x, ws)
      return sum(np.prod(a.shape, dtype=int) * a.dtype.itemsize
                 for a, _ in res)

    in_ref, in_array = residual_bytes(True), residual_bytes(False)
    self.assertGreater(in_array, 0)
    self.assertLessEqual(in_ref, in_array)

    def prog(remat):
      g = jax.jit(jax.grad(self._stacked_loss(remat, True), argnums=(0, 1)))
      return g(x, ws)
    grads = self.check(prog)
    self.assertAllClose(
        grads, jax.grad(self._stacked_loss(_no_remat, False), (0, 1))(x, ws))


# -- fix-debug-callback --


class RematDebugCallbackTest(jtu.JaxTestCase):

  def test_debug_callback_on_value_saved_by_name(self):
    calls = []
    def run(remat):
      def f(x):
        # The saved value feeds only the callback, which the
        # rematerialization replays (upstream: KeyError, also without refs).
        y = checkpoint_name(jnp.sin(x) * 2., 'x')
        jax.debug.callback(lambda v: calls.append(float(v)), y)
        return jnp.cos(x) * x
      g = jax.grad(remat(f, policy=cp.save_only_these_names('x')))(0.3)
      jax.effects_barrier()
      return g
    expected = run(_no_remat)
    n_expected = len(calls)
    del calls[:]
    actual = run(jax.remat)
    self.assertAllClose(actual, expected)
    self.assertGreater(n_expected, 0)
    self.assertGreater(len(calls), 0)
    self.assertAllClose(calls[0], 2. * np.sin(0.3))


# -- fix-remat3 --


class Remat3RefsTest(jtu.JaxTestCase):

  def test_remat3_seed(self):
    if not hasattr(config, 'remat3'):
      self.skipTest('this jax has no jax_remat3 option')
    with config.remat3(True):
      x_ref = jax.new_ref(1.)
      g = jax.grad(_seed(jax.remat))(1., x_ref)
      self.assertAllClose((g, x_ref[...]), (1., 2.))


# -- fix-remat-dce --


class RematDceTest(jtu.JaxTestCase):

  def test_dce_keeps_remat_with_unused_outputs_and_callback(self):
    calls = []
    def run(remat):
      def f(x):
        # A callback without operands: nothing that is used depends on it.
        jax.debug.callback(lambda: calls.append(1))
        return x * 2.
      @jax.jit
      def g(x):
        remat(f)(x)
        return x + 1.
      out = g(3.)
      jax.effects_barrier()
      return out
    expected = run(_no_remat)
    n_expected = len(calls)
    del calls[:]
    actual = run(jax.remat)
    self.assertAllClose(actual, expected)
    self.assertEqual(n_expected, 1)
    self.assertEqual(len(calls), n_expected)


# -- fix-swap-transpose --


class SwapTransposeTest(jtu.JaxTestCase):

  @parameterized.named_parameters(('plain', lambda f: f), ('remat', jax.remat))
  def test_constant_swapped_into_ref_takes_no_cotangent(self, wrap):
    def f(x):
      q = jax.new_ref(x * x)
      q[...] = 2.  # a constant replaces the differentiated value
      return q[...] * x
    # d/dx (2 * x) = 2 (before the fix: AttributeError in the transpose).
    self.assertAllClose(jax.grad(wrap(f))(0.5), 2.)


# -- fix-closed-call --


class ClosedCallCheckTest(jtu.JaxTestCase):

  def test_hessian_of_remat_around_scan_with_checks(self):
    def run(remat):
      def f(x):
        def step(c, w):
          return jnp.tanh(jnp.sin(c) * w), None
        @jax.jit
        def loop(c):
          return lax.scan(step, c, jnp.array([0.5, 1.5, -0.7]))[0]
        return jnp.sum(jnp.sin(loop(x)))
      return jax.hessian(remat(f))(jnp.array([0.3, -0.2]))
    # (JaxTestCase enables the checks already; jtu.with_config applies to
    # whole classes only, so the option is also set here, for this test.)
    with config.enable_checks(True):
      expected = run(_no_remat)
      actual = run(jax.remat)
    self.assertAllClose(actual, expected)


# -- modes --


class RematRefEffectsTest(jtu.JaxTestCase):

  def _seed_grad(self, **kw):
    x_ref = jax.new_ref(1.)
    g = jax.grad(_seed(jax.checkpoint, **kw))(1., x_ref)
    return g, x_ref[...]

  @parameterized.named_parameters(
      ('once_checkpoint', 'once', jax.checkpoint, (1., 2.)),
      ('once_remat', 'once', jax.remat, (1., 2.)),
      # The recompute re-runs the increment on the real ref and reads 2.
      ('replay_checkpoint', 'replay', jax.checkpoint, (2., 3.)),
      ('replay_remat', 'replay', jax.remat, (2., 3.)),
  )
  def test_seed_explicit_mode(self, mode, remat, expected):
    x_ref = jax.new_ref(1.)
    g = jax.grad(_seed(remat, ref_effects=mode))(1., x_ref)
    self.assertAllClose((g, x_ref[...]), expected)

  def test_forbid_raises_naming_the_ref(self):
    x_ref = jax.new_ref(1.)
    f = _seed(jax.checkpoint, ref_effects='forbid')
    with self.assertRaisesRegex(
        ValueError, r'(?s)ref_effects.*x_ref|x_ref.*ref_effects'):
      jax.grad(f)(1., x_ref)
    with self.assertRaisesRegex(ValueError, 'ref_effects'):
      jax.jit(f)(1., x_ref)
    with self.assertRaisesRegex(ValueError, 'x_ref'):
      jax.make_jaxpr(jax.grad(f))(1., x_ref)  # tracing alone raises
    # Tracing failed before anything ran: the ref is untouched.
    self.assertAllClose(x_ref[...], 1.)

  def test_forbid_raises_for_closed_over_read(self):
    r = jax.new_ref(jnp.ones(3))
    f = jax.remat(lambda y: jnp.sum(y * r[...]), ref_effects='forbid')
    with self.assertRaisesRegex(ValueError, 'ref_effects'):
      jax.grad(f)(jnp.ones(3))

  def test_forbid_allows_refs_made_inside_and_pure_functions(self):
    def inner_ref(y):
      r = jax.new_ref(jnp.zeros(2))
      r[0] = jnp.sin(y)
      r[1] = r[0] * y
      return r[0] + r[1] ** 2
    def pure(y):
      return jnp.sin(y) * jnp.cos(y)
    for f in (inner_ref, pure):
      expected = jax.value_and_grad(f)(0.7)
      actual = jax.value_and_grad(jax.checkpoint(f, ref_effects='forbid'))(0.7)
      self.assertAllClose(actual, expected)

  def test_replay_and_once_agree_on_read_only_body(self):
    def prog(remat, **kw):
      r = jax.new_ref(jnp.array([0.5, 2.]))
      def f(y):
        return jnp.sum(jnp.tanh(y * r[...]))
      g = jax.grad(remat(f, **kw))(jnp.array([1., -1.]))
      return g, r[...]
    expected = prog(_no_remat)
    self.assertAllClose(prog(jax.checkpoint, ref_effects='replay'), expected)
    self.assertAllClose(prog(jax.checkpoint, ref_effects='once'), expected)

  def test_bad_mode_raises(self):
    with self.assertRaisesRegex(ValueError, 'ref_effects'):
      x_ref = jax.new_ref(1.)
      jax.grad(_seed(jax.checkpoint, ref_effects='twice'))(1., x_ref)
    with self.assertRaises(ValueError):
      with config.remat_ref_effects('sometimes'):
        pass

  def test_default_from_config_context_manager(self):
    with config.remat_ref_effects('replay'):
      self.assertAllClose(self._seed_grad(), (2., 3.))
      # An explicit mode wins over the config option.
      self.assertAllClose(self._seed_grad(ref_effects='once'), (1., 2.))
    with config.remat_ref_effects('forbid'):
      with self.assertRaisesRegex(ValueError, 'x_ref'):
        self._seed_grad()
    self.assertAllClose(self._seed_grad(), (1., 2.))
    self.assertAllClose(self._seed_grad(ref_effects=None), (1., 2.))

  def test_default_from_config_update(self):
    before = config.remat_ref_effects.value
    self.assertEqual(before, 'once')
    try:
      jax.config.update('jax_remat_ref_effects', 'replay')
      self.assertAllClose(self._seed_grad(), (2., 3.))
    finally:
      jax.config.update('jax_remat_ref_effects', before)
    self.assertAllClose(self._seed_grad(), (1., 2.))

  def test_config_read_at_trace_time_retraces_jit(self):
    g = jax.jit(jax.grad(_seed(jax.remat)))
    def run():
      x_ref = jax.new_ref(1.)
      return g(1., x_ref), x_ref[...]
    self.assertAllClose(run(), (1., 2.))
    with config.remat_ref_effects('replay'):
      self.assertAllClose(run(), (2., 3.))
    self.assertAllClose(run(), (1., 2.))


# -- main --
if __name__ == '__main__':
  absltest.main(testLoader=jtu.JaxTestLoader())
