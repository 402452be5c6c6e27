"""The bugs the fuzzer found (tests/fuzz/repros/), as small regular tests.

Each program runs once with `jax.checkpoint` and once without it (the
oracle): outputs, gradients, final ref contents and callback counts must
agree. The docstring of each test names the bug and the JAX versions it hit.
"""
from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from jax._src import test_util as jtu
import numpy as np

import jax_remat_refs  # noqa: F401  (activates the patch)


def _identity(f=None, **_):
  return f if f is not None else (lambda g: g)


def _vjp_results(f, *xs):
  out, f_vjp = jax.vjp(f, *xs)
  return out, f_vjp(jax.tree.map(jnp.ones_like, out))


class FuzzRegressionTest(jtu.JaxTestCase):

  def assertTransparent(self, prog):
    expected = prog(_identity)
    actual = prog(jax.checkpoint)
    self.assertAllClose(actual, expected, rtol=1e-6, atol=1e-6)
    return expected

  @parameterized.parameters("fori", "fori-fori", "fori-remat")
  def test_write_in_nested_loops_is_kept(self, variant):
    """A: a write in a loop nested in a loop (or in a remat in a loop) inside
    a remat was lost under vjp (0.10.2; the remat form on both)."""
    def prog(ck):
      r = jax.new_ref(np.float32(0.))
      def blk(x):
        def write(c):
          r[...] = lax.stop_gradient(x)
          return c
        def outer(i, c):
          if variant == "fori-fori":
            return lax.fori_loop(0, 1, lambda j, c: write(c), c)
          if variant == "fori-remat":
            return ck(write)(c)
          return write(c)
        lax.fori_loop(0, 1, outer, ())
        return jnp.sin(x) * r[...]
      return _vjp_results(ck(blk), np.float32(0.5)), r[...]
    (_, _), r_final = self.assertTransparent(prog)
    self.assertAllClose(r_final, np.float32(0.5))

  def test_loop_write_inside_remat_inside_scan(self):
    """A2: an output-less remat in a scan body, holding a scan that writes an
    external ref: the write was lost (0.10.2)."""
    def prog(ck):
      r = jax.new_ref(np.array([0.1, -0.5, 0.7, 0.2], np.float32))
      flag = jax.new_ref(np.int32(0))
      def f(xs):
        def outer(c, x):
          v = r[2]
          def blk():
            def inner(c, x):
              flag[...] = (jnp.where(v > 0, x, v) > 0).astype(jnp.int32)
              return c, x
            lax.scan(inner, (), xs)
            return ()
          ck(blk)()
          return c, v
        lax.scan(outer, (), xs)
        return jnp.sin(xs)
      out = _vjp_results(f, np.array([0.3, -0.2, 0.5, 1.0], np.float32))
      return out, flag[...]
    _, flag = self.assertTransparent(prog)
    self.assertEqual(int(flag), 1)  # the last element, 1.0, is positive

  def test_addupdate_into_differentiated_ref(self):
    """E: a differentiated ref overwritten with a constant before a remat that
    addupdates into it: 'ArrayImpl has no attribute accum' in the backward
    pass (0.10.2's swap transpose)."""
    def prog(ck):
      r = jax.new_ref(np.float32(0.7))
      def f(x):
        c = r[...]
        q = jax.new_ref(jnp.tanh(x * x))
        q[...] = jnp.tanh(c)
        def blk():
          jax.ref.addupdate(q, ..., jnp.sin(c))
          return (q[...],)
        (v,) = ck(blk)()
        return jnp.sin(x) + v
      return _vjp_results(f, np.float32(0.5))
    (out, (g,)) = self.assertTransparent(prog)
    self.assertAllClose(out, np.sin(0.5) + np.tanh(0.7) + np.sin(0.7))
    self.assertAllClose(g, np.cos(0.5))

  def test_loop_makes_ref_from_swapped_value(self):
    """F: a loop body inside a remat makes a ref from a value swapped out of
    an external ref: 'returned a mutable array reference' (both versions,
    upstream too)."""
    def prog(ck):
      r = jax.new_ref(np.array([0.3, 0.4], np.float32))
      def blk(x):
        def body(i, c):
          old = jax.ref.swap(r, 0, lax.stop_gradient(x))
          q = jax.new_ref(jnp.broadcast_to(old, (2,)))
          return c + q[i % 2]
        s = lax.fori_loop(0, 2, body, np.float32(0.))
        return jnp.sin(x) * s
      return _vjp_results(ck(blk), np.float32(0.5)), r[...]
    ((out, (g,)), r_final) = self.assertTransparent(prog)
    # Iteration 0 swaps out 0.3, iteration 1 swaps out 0.5: s = 0.8.
    self.assertAllClose(out, np.sin(0.5) * 0.8)
    self.assertAllClose(g, np.cos(0.5) * 0.8)
    self.assertAllClose(r_final, np.array([0.5, 0.4], np.float32))

  def test_remat_in_cond_branch_with_swap_and_callback(self):
    """G: a remat in a cond branch that swaps into an external ref and runs
    a debug callback: XLA's 'Invalid sharding' in the backward pass
    (0.10.2)."""
    def prog(ck):
      r = jax.new_ref(np.array([0.3, 0.4], np.float32))
      def f(x):
        y = x * x
        def branch():
          def blk(y):
            @jax.jit
            def inner(y):
              old = jax.ref.swap(r, 1, lax.stop_gradient(jnp.tanh(y)))
              jax.debug.callback(lambda *a: None, lax.stop_gradient(y))
              return jnp.tanh(y * old)
            return inner(y)
          return ck(blk)(y)
        lax.cond(y > 0, branch, lambda: y)
        return jnp.sin(x)
      return _vjp_results(f, np.float32(0.5)), r[...]
    (_, r_final) = self.assertTransparent(prog)
    self.assertAllClose(r_final, np.array([0.3, np.tanh(0.25)], np.float32))

  @parameterized.parameters("jit", "loop")
  def test_callback_only_remat_runs(self, where):
    """H: a staged remat whose outputs are unused and whose only effect is a
    callback was dropped (0.10.2's remat DCE), so the callback never ran."""
    calls = []
    def prog(ck):
      calls.clear()
      def f(x):
        if where == "jit":
          def only_callback(x):
            jax.debug.callback(lambda: calls.append(1))
            return ()
          jax.jit(ck(only_callback))(x)
          return x
        def blk():
          jax.debug.callback(lambda: calls.append(1))
          return x * 2.0
        def body(i, c):
          ck(blk)()  # output unused
          return c
        return lax.fori_loop(0, 2, body, x)
      out = f(np.float32(1.0))
      jax.effects_barrier()
      return out, len(calls)
    _, n_calls = self.assertTransparent(prog)
    self.assertEqual(n_calls, 1 if where == "jit" else 2)

  @parameterized.parameters(False, True)
  def test_callback_on_value_saved_by_name(self, with_ref):
    """K: a debug callback on a value the policy saves by name: the
    rematerialization replays the callback but never got the value (JAX's
    callback rule; KeyError on both versions, for pure functions too)."""
    policy = jax.checkpoint_policies.save_only_these_names("s")
    def prog(ck):
      calls = []
      count = jax.new_ref(np.int32(0))
      def f(x):
        s = jnp.sin(x)
        def blk():
          if with_ref:
            count[...] = count[...] + 1
          v = checkpoint_name(s, "s")
          jax.debug.callback(lambda v: calls.append(float(v)), v)
          return (x * 2.0,)  # the saved value feeds only the callback
        (out,) = (ck(blk, policy=policy) if ck is jax.checkpoint else blk)()
        return out
      out, g = _vjp_results(f, np.float32(0.5))
      jax.effects_barrier()
      return out, g, count[...], calls[0]
    out, (g,), count, first_call = self.assertTransparent(prog)
    self.assertAllClose(g, 2.0)
    self.assertEqual(int(count), 1 if with_ref else 0)
    self.assertAllClose(first_call, np.sin(0.5))

  def test_ref_made_and_written_inside_jit_inside_remat(self):
    """B in a jit (seed 4326): a ref made inside a `jit` in the remat body
    from a value without gradient, then written with a differentiated value:
    JAX's 'Mutating a reference with unknown/differentiated values'."""
    def prog(ck):
      r = jax.new_ref(np.array([0.1, 0.2], np.float32))
      def f(x):
        @jax.jit
        def blk():
          old = jax.ref.swap(r, 1, lax.stop_gradient(jnp.tanh(x)))
          q = jax.new_ref(jnp.tanh(old))
          q[...] = jnp.sin(jnp.cos(x))
          return q[...] * x
        return ck(blk)()
      return _vjp_results(f, np.float32(0.5)), r[...]
    ((out, (g,)), r_final) = self.assertTransparent(prog)
    s = np.sin(np.cos(0.5))
    self.assertAllClose(out, s * 0.5)
    self.assertAllClose(g, s - 0.5 * np.cos(np.cos(0.5)) * np.sin(0.5))
    self.assertAllClose(r_final, np.array([0.1, np.tanh(0.5)], np.float32))

  def test_forward_of_vjp_matches_plain_call(self):
    """Seed 4918: a fori_loop body makes a ref and swaps a differentiated
    value into it. JAX without remat leaves a wrong value in an external ref
    under linearize/vjp (both versions), so the fuzz oracle checks itself
    against the plain call; with remat the ref matches the plain call."""
    def run(ck, differentiate):
      r = jax.new_ref(np.zeros(3, np.float32))
      def f(x):
        def body(i, v):
          r[i] += lax.stop_gradient(jnp.tanh(jnp.sum(v)))
          def blk():
            q = jax.new_ref(x)
            return jax.ref.swap(q, 1, jnp.tanh(jnp.dot(v, v)))
          old = ck(blk)()
          return jnp.sin(v + old)
        return jnp.sum(lax.fori_loop(0, 3, body, x * x))
      xs = np.array([0.3, 0.1, 0.7, 0.9], np.float32)
      if differentiate:
        jax.vjp(f, xs)
      else:
        f(xs)
      return r[...]
    plain = run(_identity, False)
    self.assertAllClose(run(jax.checkpoint, True), plain, rtol=1e-6, atol=1e-6)
    self.assertAllClose(run(jax.checkpoint, False), plain, rtol=1e-6, atol=1e-6)

  def test_cond_updates_ref_made_in_body(self):
    """Seed 4198: a cond branch addupdates a ref the remat body made (no
    external ref): 'State effect not supported in cond partial-eval'
    (0.10.2)."""
    def prog(ck):
      def f(x):
        def blk():
          q = jax.new_ref(jnp.tanh(x))
          s = jnp.sum(x)
          def bump():
            q[1:3] += jnp.sin(s * jnp.ones(2, jnp.float32))
          lax.cond(s > 0, lambda: None, bump)
          return jnp.sum(q[...]) * s
        return ck(blk)()
      return _vjp_results(f, np.array([-0.3, 0.1, 0.2, -0.4], np.float32))
    out, _ = self.assertTransparent(prog)
    x = np.array([-0.3, 0.1, 0.2, -0.4])
    q = np.tanh(x)
    q[1:3] += np.sin(x.sum())
    self.assertAllClose(out, q.sum() * x.sum())

  def test_loop_hands_its_ref_to_nested_remat(self):
    """Seed 5403: a loop body inside a remat makes a ref and hands it to a
    nested remat: 'Did not ask for inval to be discharged' (both versions,
    from the first fix of F)."""
    def prog(ck):
      flag = jax.new_ref(np.int32(3))
      def f(x):
        def blk():
          def body(i, c):
            q = jax.new_ref(c)
            def inner(flag, q):  # takes both refs, reads neither
              return (jnp.sin(jnp.cos(c)),)
            (v,) = ck(inner)(flag, q)
            return jnp.tanh(c) + v
          return lax.fori_loop(0, 2, body, x) * flag[...].astype(jnp.float32)
        return ck(blk)()
      return _vjp_results(f, np.array([0.4, -0.2], np.float32))
    self.assertTransparent(prog)

  def test_ref_handed_to_nested_remat_in_cond_in_scan(self):
    """Seed 5308: in a scan body, a cond branch holds a remat handing a ref
    (made in the scan body) to a nested remat that never touches it: the
    outer remat's snapshot read of it made the cond unsplittable ('State
    effect not supported in cond partial-eval', 0.10.2)."""
    def prog(ck):
      def f(x, y):
        def body(c, _):
          q = jax.new_ref(jnp.broadcast_to(x, (2,)))
          def branch():
            def middle():
              ck(lambda q: ())(q)
              return ()
            ck(lambda: ck(middle)())()
            return x
          v = lax.cond(c > 0, branch, lambda: jnp.cos(y))
          return jnp.tanh(c + v), None
        return lax.scan(body, y, None, length=1)[0]
      return _vjp_results(f, np.float32(0.162), np.float32(-0.931))
    out, _ = self.assertTransparent(prog)
    self.assertAllClose(out, np.tanh(-0.931 + np.cos(-0.931)))


  @parameterized.product(length=(1, 3), wrap=("remat", "remat-jit", "jit-remat"))
  def test_nested_remat_writes_loop_invariant_ref_at_index(self, length, wrap):
    """Seed 9608: a loop body inside a remat makes a ref from a value that
    does not change across iterations and hands it, with an external ref,
    to a nested remat (or jit) writing it at the loop index: JAX's loop
    partial eval (hoisting what does not depend on the iteration) raised
    'Mutating a reference with unknown/differentiated values' (0.12.0.1;
    this reduced form: a JaxprTypeError on 0.10.2). JAX without remat gets
    vjp's output wrong here (it loses the write), so the oracle is the plain
    call and forward mode."""
    r0 = np.array([-1.2, -0.8], np.float32)
    def build(ck):
      r = jax.new_ref(r0)
      def f(x):
        def blk():
          w = jnp.tanh(x) * 2.
          def body(i, c):
            q = jax.new_ref(w)  # the same value in every iteration
            v = r[...]
            def inner():
              q[i % 2] += lax.stop_gradient(jnp.tanh(jnp.sum(v)))
              return v
            if wrap == "remat-jit":
              inner = jax.jit(inner)
            inner = ck(inner)
            if wrap == "jit-remat":
              inner = jax.jit(inner)
            u = inner()
            return jnp.sin(c + u) + q[...]
          return lax.fori_loop(0, length, body, x)
        return ck(blk)()
      return f, r
    x = np.array([1.1, -1.3], np.float32)
    c = x
    for i in range(length):
      q = np.tanh(x) * 2.
      q[i % 2] += np.tanh(r0.sum())
      c = np.sin(c + r0) + q
    f, _ = build(_identity)
    self.assertAllClose(f(x), c, rtol=1e-5, atol=1e-5)
    expected_grad = np.array([jnp.sum(jax.jvp(f, (x,), (e,))[1])
                              for e in np.eye(2, dtype=np.float32)])
    f, r = build(jax.checkpoint)
    out, (grad,) = _vjp_results(f, x)
    self.assertAllClose(out, c, rtol=1e-5, atol=1e-5)
    self.assertAllClose(grad, expected_grad, rtol=1e-5, atol=1e-5)
    self.assertAllClose(r[...], r0)

  @parameterized.parameters("jit", "remat")
  def test_call_with_own_ref_and_outside_ref_beside_written_local_ref(self, call):
    """Seed 5859: a remat body makes a ref and writes a differentiated value
    into it, and calls a jit (or remat) that takes an external ref and makes
    a ref of its own: discharging the body's ref also discharged the
    external one ('Did not ask for inval to be discharged', both versions)."""
    def prog(ck):
      r = jax.new_ref(np.float32(1.5))
      def f(x, y):
        def blk():
          q = jax.new_ref(jnp.broadcast_to(x, (3,)))
          def inner(r):
            p = jax.new_ref(x)
            return p[...] * r[...]
          wrap = jax.jit if call == "jit" else ck
          v = wrap(inner)(r)
          q[1] = jnp.tanh(v)
          return q[...].sum()
        return ck(blk)() * y
      return _vjp_results(f, np.float32(-0.3), np.float32(0.7)), r[...]
    (out, grads), r_final = self.assertTransparent(prog)
    x, y = np.float32(-0.3), np.float32(0.7)
    self.assertAllClose(out, (2 * x + np.tanh(1.5 * x)) * y)
    self.assertAllClose(grads, ((2 + 1.5 / np.cosh(1.5 * x) ** 2) * y,
                                2 * x + np.tanh(1.5 * x)))
    self.assertAllClose(r_final, np.float32(1.5))


  def test_unused_ref_passed_to_remat_in_cond_branch_in_loop(self):
    """Gen 1 seed 4000869: a remat passed a ref its body never uses, in a
    cond branch inside a loop, under vjp. Value form read every ref input at
    entry, this one too: a state effect in the branch, which JAX's cond
    partial eval rejects ("State effect not supported in cond partial-eval"),
    where the program without remat runs."""
    def prog(ck):
      r = jax.new_ref(np.array([0.3, 0.4], np.float32))
      def f(x):
        def body(s):
          i, c = s
          def branch(c):
            def blk(unused_ref):
              q = jax.new_ref(jnp.cos(c))
              return jnp.sin(c) * q[...]
            return jax.jit(ck(blk))(r)
          return i + 1, lax.cond(c > 0, branch, jnp.cos, c)
        s0 = (0, lax.stop_gradient(x))
        return jnp.sin(x) * lax.while_loop(lambda s: s[0] < 2, body, s0)[1]
      return jax.jvp(f, (0.3,), (1.,)), jax.vjp(f, 0.3)[1](1.), r[...]
    (_, _), _, r_final = self.assertTransparent(prog)
    self.assertAllClose(r_final, np.array([0.3, 0.4], np.float32))

if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
