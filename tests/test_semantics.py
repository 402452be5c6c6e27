"""Explicit ref-effect semantics: `ref_effects="once" | "replay" | "forbid"`.

Oracles: hand-computed numbers (reasoned in comments), the same program
without remat (for "once"), and upstream JAX (for "replay").
"""
import functools
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
from jax._src import test_util as jtu
import numpy as np

import jax_remat_refs as jrr
from jax_remat_refs import RematRefError
from tests.transparency import seed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.basename(__file__)
# Where `seed` first accesses x_ref: the line after its `def`.
SEED_FILE = os.path.basename(seed.__code__.co_filename)
SEED_FIRST_ACCESS_LINE = seed.__code__.co_firstlineno + 1

# The seed program with x = 1 at entry, differentiated at y = 1:
#   once:   the rematerialization reads the entry value 1 -> grad 1;
#           one increment -> ref 2 (the same as without remat).
#   replay: the rematerialization reads the ref after the forward pass's
#           increment (2) -> grad 2, and increments it again -> ref 3.
EXPECTED_SEED = {"once": (1., 2.), "replay": (2., 3.)}


def run_seed(fun, jit=False):
  x_ref = jax.new_ref(1.)
  g = jax.grad(fun)
  g = jax.jit(g) if jit else g
  out = g(1., x_ref)
  return float(out), float(x_ref[...])


class ModesTest(jtu.JaxTestCase):

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_seed(self, mode):
    self.assertEqual(run_seed(jrr.remat(seed, ref_effects=mode)),
                     EXPECTED_SEED[mode])

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_seed_under_jit(self, mode):
    self.assertEqual(run_seed(jrr.remat(seed, ref_effects=mode), jit=True),
                     EXPECTED_SEED[mode])

  def test_once_equals_no_remat(self):
    self.assertEqual(run_seed(jrr.remat(seed, ref_effects="once")),
                     run_seed(seed))

  def test_replay_equals_upstream(self):
    with jrr.upstream_behavior():
      upstream = run_seed(jax.remat(seed))
    self.assertEqual(run_seed(jrr.remat(seed, ref_effects="replay")),
                     upstream)

  def _forbid_message(self, fun, *args, jit=False):
    g = jax.grad(fun)
    g = jax.jit(g) if jit else g
    with self.assertRaises(RematRefError) as cm:
      g(*args)
    return str(cm.exception)

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_forbid_argument(self, jit):
    x_ref = jax.new_ref(1.)
    msg = self._forbid_message(jrr.remat(seed, ref_effects="forbid"), 1.,
                               x_ref, jit=jit)
    self.assertIn("remat", msg)
    self.assertTrue("float32[]" in msg or "f32[]" in msg, msg)
    self.assertIn("argument", msg)
    self.assertIn("x_ref", msg)
    self.assertNotIn("closed-over", msg)
    self.assertIn(f"{SEED_FILE}:{SEED_FIRST_ACCESS_LINE}", msg)
    # Raised at trace time: the ref was never touched.
    self.assertEqual(float(x_ref[...]), 1.)

  def test_forbid_closed_over(self):
    x_ref = jax.new_ref(jnp.zeros((2, 3), jnp.int32))
    def f(y):
      z = jnp.sin(y)
      x_ref[0, 1] = jnp.int32(4)  # first access: co_firstlineno + 2
      return z * 2.
    msg = self._forbid_message(jrr.remat(f, ref_effects="forbid"), 0.5)
    self.assertIn("remat", msg)
    self.assertTrue("int32[2,3]" in msg or "i32[2,3]" in msg, msg)
    self.assertIn("closed-over", msg)
    self.assertIn(f"{THIS_FILE}:{f.__code__.co_firstlineno + 2}", msg)
    np.testing.assert_array_equal(np.asarray(x_ref[...]), np.zeros((2, 3)))

  def test_forbid_without_autodiff(self):
    x_ref = jax.new_ref(1.)
    with self.assertRaises(RematRefError):
      jrr.remat(seed, ref_effects="forbid")(1., x_ref)
    self.assertEqual(float(x_ref[...]), 1.)

  def test_forbid_allows_internal_refs(self):
    def f(y):
      r = jax.new_ref(y)
      r[...] = r[...] * y
      return jnp.sin(r[...])
    got = jax.value_and_grad(jrr.remat(f, ref_effects="forbid"))(0.8)
    want = jax.value_and_grad(f)(0.8)
    self.assertAllClose(got, want)
    self.assertAllClose(got[1], np.cos(0.64) * 1.6, check_dtypes=False)

  def test_forbid_allows_pure_functions(self):
    f = lambda y: jnp.sin(y) * y
    got = jax.grad(jrr.remat(f, ref_effects="forbid"))(0.3)
    self.assertAllClose(got, jax.grad(f)(0.3))


class NestedModesTest(jtu.JaxTestCase):
  """An outer remat calling an inner remat of `seed`; the only ref effects
  are in the inner body. The inner remat's choice governs its own
  rematerialization; a "replay" outer remat replays everything its body does,
  the inner call included.

  Under grad (x = 1 at entry, y = 1) the inner body runs three times: the
  forward pass, the outer rematerialization, and the inner rematerialization
  (which happens inside the outer's backward pass).
  """

  def _run(self, outer_mode, inner_mode, jit=False):
    inner = jrr.remat(seed, ref_effects=inner_mode)
    outer = jrr.remat(lambda y, x_ref: inner(y, x_ref),
                      ref_effects=outer_mode)
    return run_seed(outer, jit=jit)

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_once_once(self, jit):
    # As without remat.
    self.assertEqual(self._run("once", "once", jit), (1., 2.))

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_replay_replay(self, jit):
    # Upstream: forward reads 1, x -> 2; the outer rematerialization runs the
    # inner forward on the real ref (reads 2, x -> 3); the inner
    # rematerialization replays (reads 3 for the gradient, x -> 4).
    self.assertEqual(self._run("replay", "replay", jit), (3., 4.))
    with jrr.upstream_behavior():
      upstream = run_seed(jax.remat(lambda y, r: jax.remat(seed)(y, r)))
    self.assertEqual(upstream, (3., 4.))

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_outer_replay_inner_once(self, jit):
    # The inner "once" remat is traced into the outer body as a read at its
    # entry, a pure remat and a write-back: effects of the outer body, which
    # an outer "replay" remat replays on the real ref. Its
    # rematerialization reads x = 2 (grad 2) and writes 3.
    self.assertEqual(self._run("replay", "once", jit), (2., 3.))

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_outer_once_inner_replay(self, jit):
    # An outer "once" remat makes its whole body transparent: the outer's
    # rematerialization runs on private copies of the refs, and a nested
    # "replay" remat does not replay on those copies (README, "Nesting").
    # So the answer is the no-remat one: grad 1, ref 2.
    self.assertEqual(self._run("once", "replay", jit), (1., 2.))
    no_remat = run_seed(seed)
    self.assertEqual(self._run("once", "replay", jit), no_remat)


class ScanModesTest(jtu.JaxTestCase):

  @staticmethod
  def _body(c, x_ref):
    out = jnp.sin(c) * x_ref[...]
    x_ref[...] = x_ref[...] + 1.
    return out

  def _run(self, rm):
    x_ref = jax.new_ref(1.)
    step = rm(self._body)
    def loss(c):
      return lax.scan(lambda c, _: (step(c, x_ref), None), c, None,
                      length=3)[0]
    return float(jax.grad(loss)(0.7)), float(x_ref[...])

  @staticmethod
  def _hand(reads):
    # Forward: c_{k+1} = sin(c_k) * (k + 1) (the k-th step reads k + 1).
    # The gradient is the product of cos(c_k) * (value read for step k when
    # it is differentiated).
    cs = [0.7]
    for k in range(3):
      cs.append(np.sin(cs[-1]) * (k + 1))
    return float(np.prod([np.cos(cs[k]) * reads[k] for k in range(3)]))

  def test_once(self):
    g, x = self._run(functools.partial(jrr.remat, ref_effects="once"))
    self.assertAllClose(g, self._hand([1., 2., 3.]), check_dtypes=False)
    self.assertEqual(x, 4.)
    self.assertAllClose((g, x), self._run(lambda f: f), check_dtypes=False)

  def test_replay(self):
    g, x = self._run(functools.partial(jrr.remat, ref_effects="replay"))
    # The forward scan leaves x = 4. The backward scan runs steps 2, 1, 0,
    # each replaying its body on the real ref: step 2 reads 4, step 1 reads
    # 5, step 0 reads 6; x ends at 7.
    self.assertAllClose(g, self._hand([6., 5., 4.]), check_dtypes=False)
    self.assertEqual(x, 7.)
    with jrr.upstream_behavior():
      self.assertAllClose((g, x), self._run(jax.remat), check_dtypes=False)

  def test_forbid(self):
    with self.assertRaises(RematRefError):
      self._run(functools.partial(jrr.remat, ref_effects="forbid"))


class GlobalDefaultTest(jtu.JaxTestCase):

  def setUp(self):
    super().setUp()
    self.assertEqual(jrr.get_ref_effects_default(), "once")

  def tearDown(self):
    jax.config.update("jax_remat_ref_effects", "once")
    super().tearDown()

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_config_update(self, mode):
    try:
      jax.config.update("jax_remat_ref_effects", mode)
      self.assertEqual(jrr.get_ref_effects_default(), mode)
      self.assertEqual(run_seed(jax.remat(seed)), EXPECTED_SEED[mode])
    finally:
      jax.config.update("jax_remat_ref_effects", "once")

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_set_ref_effects_default(self, mode):
    try:
      jrr.set_ref_effects_default(mode)
      self.assertEqual(jrr.get_ref_effects_default(), mode)
      self.assertEqual(run_seed(jax.remat(seed)), EXPECTED_SEED[mode])
      self.assertEqual(run_seed(jax.checkpoint(seed), jit=True),
                       EXPECTED_SEED[mode])
    finally:
      jrr.set_ref_effects_default("once")

  def test_set_forbid_default(self):
    try:
      jrr.set_ref_effects_default("forbid")
      with self.assertRaises(RematRefError):
        run_seed(jax.remat(seed))
    finally:
      jrr.set_ref_effects_default("once")

  def test_context_manager(self):
    with jrr.ref_effects_default("replay"):
      self.assertEqual(jrr.get_ref_effects_default(), "replay")
      self.assertEqual(run_seed(jax.remat(seed)), EXPECTED_SEED["replay"])
      with jrr.ref_effects_default("forbid"):
        with self.assertRaises(RematRefError):
          run_seed(jax.remat(seed))
      self.assertEqual(run_seed(jax.remat(seed), jit=True),
                       EXPECTED_SEED["replay"])
    self.assertEqual(jrr.get_ref_effects_default(), "once")
    self.assertEqual(run_seed(jax.remat(seed)), EXPECTED_SEED["once"])

  def test_explicit_mode_beats_default(self):
    with jrr.ref_effects_default("replay"):
      self.assertEqual(run_seed(jrr.remat(seed, ref_effects="once")),
                       EXPECTED_SEED["once"])
    with jrr.ref_effects_default("forbid"):
      self.assertEqual(run_seed(jrr.remat(seed, ref_effects="replay")),
                       EXPECTED_SEED["replay"])

  def test_mode_change_retraces_same_jit(self):
    # One jit object, called under "once" and then under "replay": the
    # second call must not reuse the program compiled for "once".
    f = jax.jit(jax.grad(jax.remat(seed)))
    def call():
      x_ref = jax.new_ref(1.)
      return float(f(1., x_ref)), float(x_ref[...])
    self.assertEqual(call(), EXPECTED_SEED["once"])
    with jrr.ref_effects_default("replay"):
      self.assertEqual(call(), EXPECTED_SEED["replay"])
    self.assertEqual(call(), EXPECTED_SEED["once"])

  def test_mode_change_retraces_same_jit_config_update(self):
    f = jax.jit(jax.grad(jax.remat(seed)))
    def call():
      x_ref = jax.new_ref(1.)
      return float(f(1., x_ref)), float(x_ref[...])
    self.assertEqual(call(), EXPECTED_SEED["once"])
    try:
      jax.config.update("jax_remat_ref_effects", "replay")
      self.assertEqual(call(), EXPECTED_SEED["replay"])
    finally:
      jax.config.update("jax_remat_ref_effects", "once")


class JaxprTest(jtu.JaxTestCase):

  def _remats(self, fun, *args):
    jaxpr = jax.make_jaxpr(fun)(*args).jaxpr
    return jaxpr, [e for e in jaxpr.eqns if e.primitive.name == "remat2"]

  def test_once_is_value_form(self):
    # "once": the refs are read at entry, the remat body is pure, and the
    # refs it writes are written back after it.
    jaxpr, (remat,) = self._remats(jrr.remat(seed, ref_effects="once"),
                                   1., jax.new_ref(1.))
    body = remat.params["jaxpr"]
    self.assertFalse(any(hasattr(v.aval, "inner_aval") for v in body.invars))
    self.assertEmpty(body.effects)
    names = [e.primitive.name for e in jaxpr.eqns]
    self.assertLess(names.index("get"), names.index("remat2"))
    self.assertLess(names.index("remat2"), names.index("swap"))
    self.assertNotIn("RefEffects", str(remat.params["policy"]))

  def test_replay_keeps_effects_and_shows_mode(self):
    _, (remat,) = self._remats(jrr.remat(seed, ref_effects="replay"),
                               1., jax.new_ref(1.))
    self.assertIn("RefEffects('replay'", str(remat.params["policy"]))
    self.assertTrue(any(hasattr(v.aval, "inner_aval")
                        for v in remat.params["jaxpr"].invars))

  def test_default_mode_is_read_at_trace_time(self):
    with jrr.ref_effects_default("replay"):
      _, (remat,) = self._remats(jax.remat(seed), 1., jax.new_ref(1.))
    self.assertIn("RefEffects('replay'", str(remat.params["policy"]))
    _, (remat,) = self._remats(jax.remat(seed), 1., jax.new_ref(1.))
    self.assertEmpty(remat.params["jaxpr"].effects)

  @parameterized.named_parameters(*((m, m) for m in jrr.MODES))
  def test_pure_function_shows_no_mode(self, mode):
    def f(w, x):
      return jnp.sum(jnp.sin(w @ x) @ x)
    args = (jnp.ones((2, 2)), jnp.eye(2))
    ours = jax.make_jaxpr(jax.grad(jrr.remat(f, ref_effects=mode)))(*args)
    self.assertNotIn("RefEffects", str(ours))
    plain = jax.make_jaxpr(jax.grad(jax.remat(f)))(*args)
    self.assertEqual(str(ours), str(plain))

  def test_internal_refs_only_show_no_mode(self):
    def f(y):
      r = jax.new_ref(y)
      r[...] = jnp.sin(r[...])
      return r[...] * y
    text = str(jax.make_jaxpr(jrr.remat(f, ref_effects="replay"))(0.5))
    self.assertNotIn("RefEffects", text)

  def test_static_indices_fold_to_literals(self):
    # Discharging `r[k]` normalizes the static index k (k < 0, k + n,
    # select) with scalar equations on literals; the value form's body has
    # their values instead, and reads the same elements (-1 included).
    def f(x, r):
      r[1] = jnp.sin(r[-1])
      return x * r[1] + x * x * r[2]
    _, (remat,) = self._remats(jax.remat(f), 0.5, jax.new_ref(jnp.arange(4.)))
    names = {e.primitive.name for e in remat.params["jaxpr"].eqns}
    self.assertNoCommonElements(names, {"lt", "select_n"})
    def expected(x, v):
      v = v.at[1].set(jnp.sin(v[3]))
      return x * v[1] + x * x * v[2], v
    for fun in (jax.remat(f), jax.jit(jax.remat(f))):
      r = jax.new_ref(jnp.arange(4.))
      g = jax.grad(fun)(0.5, r)
      want_g = jax.grad(lambda x: expected(x, jnp.arange(4.))[0])(0.5)
      self.assertAllClose(g, want_g)
      self.assertAllClose(r[...], expected(0.5, jnp.arange(4.))[1])

class BadInputTest(jtu.JaxTestCase):

  def test_unknown_mode(self):
    with self.assertRaisesRegex(ValueError, "bogus"):
      jrr.remat(seed, ref_effects="bogus")
    with self.assertRaises(ValueError):
      jrr.remat(ref_effects="ONCE")
    with self.assertRaises(ValueError):
      jrr.set_ref_effects_default("sometimes")
    self.assertEqual(jrr.get_ref_effects_default(), "once")
    with self.assertRaises(ValueError):
      with jrr.ref_effects_default("twice"):
        pass
    self.assertEqual(jrr.get_ref_effects_default(), "once")

  def test_non_string_mode(self):
    for bad in (1, None, True, ("once",)):
      with self.assertRaises(TypeError):
        jrr.remat(seed, ref_effects=bad)

  def test_non_callable_fun(self):
    for bad in (3, "seed", [seed]):
      with self.assertRaises(TypeError):
        jrr.remat(bad)
      with self.assertRaises(TypeError):
        jrr.checkpoint(bad, ref_effects="replay")

  def test_config_rejects_unknown(self):
    with self.assertRaises(ValueError):
      jax.config.update("jax_remat_ref_effects", "bogus")
    self.assertEqual(jrr.get_ref_effects_default(), "once")


class DecoratorFormsTest(jtu.JaxTestCase):

  def test_bare_decorator(self):
    @jrr.remat
    def f(y, x_ref):
      out = y * x_ref[...]
      x_ref[...] += 1
      return out
    self.assertEqual(run_seed(f), EXPECTED_SEED["once"])

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_decorator_with_mode(self, mode):
    @jrr.remat(ref_effects=mode)
    def f(y, x_ref):
      out = y * x_ref[...]
      x_ref[...] += 1
      return out
    self.assertEqual(run_seed(f), EXPECTED_SEED[mode])

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_partial(self, mode):
    @functools.partial(jrr.checkpoint, ref_effects=mode)
    def f(y, x_ref):
      out = y * x_ref[...]
      x_ref[...] += 1
      return out
    self.assertEqual(run_seed(f), EXPECTED_SEED[mode])

  @parameterized.named_parameters(("once", "once"), ("replay", "replay"))
  def test_static_argnums(self, mode):
    @functools.partial(jrr.remat, static_argnums=(1,), ref_effects=mode)
    def f(y, n, x_ref):
      out = y * x_ref[...] * n
      x_ref[...] += 1
      return out
    x_ref = jax.new_ref(1.)
    g = jax.grad(f)(1., 3, x_ref)
    # once: 3 * 1, ref 2. replay: 3 * 2 (reads after the increment), ref 3.
    want = {"once": (3., 2.), "replay": (6., 3.)}[mode]
    self.assertEqual((float(g), float(x_ref[...])), want)

  def test_policy_and_mode(self):
    @functools.partial(jrr.remat, policy=jax.checkpoint_policies.dots_saveable,
                       ref_effects="replay")
    def f(y, x_ref):
      out = y * x_ref[...]
      x_ref[...] += 1
      return out
    self.assertEqual(run_seed(f), EXPECTED_SEED["replay"])

  def test_checkpoint_is_remat(self):
    self.assertIs(jrr.checkpoint, jrr.remat)


class EnvVarTest(jtu.JaxTestCase):

  SCRIPT = textwrap.dedent("""
      import jax
      import jax_remat_refs
      from tests.transparency import seed_program
      g, x = seed_program(jax.remat)
      print(jax_remat_refs.get_ref_effects_default(), float(g), float(x))
      """)

  def _run(self, value):
    env = dict(os.environ)
    env["JAX_REMAT_REF_EFFECTS"] = value
    return subprocess.run([sys.executable, "-c", self.SCRIPT], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)

  def test_replay_from_env(self):
    res = self._run("replay")
    self.assertEqual(res.returncode, 0, res.stderr)
    self.assertEqual(res.stdout.strip().splitlines()[-1], "replay 2.0 3.0")

  def test_invalid_env_value(self):
    res = self._run("sometimes")
    self.assertNotEqual(res.returncode, 0)
    self.assertIn("JAX_REMAT_REF_EFFECTS", res.stderr)
    self.assertIn("sometimes", res.stderr)
    self.assertNotIn("once 1.0 2.0", res.stdout)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
