"""The fuzzers' menu follows JAX's ref API (`tests/fuzz/ref_api.py`).

Every ref API entry the installed JAX exports (`jax.ref`, its top-level
aliases, `jax.ad`, the keywords of `new_ref` / `empty_ref`, the ref kinds,
the ref methods of a vjp function) must be exercised by a generator feature
or excluded with a reason; an entry a new JAX adds fails
`test_every_entry_is_covered_or_excluded` until one of the two is written
down. Every covered feature must also show up in generated programs, and a
program's feature tags must match its source.
"""
import collections
import inspect

from absl.testing import absltest
import jax
from jax._src import test_util as jtu

import jax_remat_refs  # noqa: F401  (activates the patch)
from tests.fuzz import gen
from tests.fuzz import gen2
from tests.fuzz import ref_api

SEEDS = range(300)   # generation only: a few seconds per generator


def _features(module):
  """feature tag -> number of programs of `SEEDS` carrying it."""
  counts = collections.Counter()
  for seed in SEEDS:
    counts.update(module.generate(seed).features)
  return counts


def _available(feature):
  """Whether the installed JAX has what `feature` needs."""
  needs = dict(kind=ref_api.NO_GRAD_KIND, kind_diff_write=ref_api.NO_GRAD_KIND,
               with_refs=ref_api.HAS_WITH_REFS,
               grad_value=ref_api.HAS_GRAD_VALUE,
               dont_want=ref_api.HAS_DONT_WANT,
               ref_primal=ref_api.vjp_takes_ref_primals(),
               freeze=ref_api.HAS_FREEZE, free_ref=ref_api.HAS_FREE_REF,
               empty_ref=ref_api.HAS_EMPTY_REF,
               ref_get=ref_api.HAS_REF_GET_SET, ref_set=ref_api.HAS_REF_GET_SET)
  return bool(needs.get(feature, True))


class RefApiMenuTest(jtu.JaxTestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.gen1 = _features(gen)
    cls.gen2 = _features(gen2)

  def test_every_entry_is_covered_or_excluded(self):
    self.assertEmpty(ref_api.gaps(), msg=(
        "JAX exports ref API entries the fuzzers neither exercise nor "
        "exclude; map each in tests/fuzz/ref_api.py (COVERED or EXCLUDED)"))

  def test_menu_names_known_features_only(self):
    self.assertEmpty(set(ref_api.COVERED.values()) - set(ref_api.FEATURES))
    self.assertEmpty(set(ref_api.COVERED) & set(ref_api.EXCLUDED))
    for entry, reason in ref_api.EXCLUDED.items():
      self.assertNotEmpty(reason.strip(), msg=entry)

  def test_entries_come_from_jax(self):
    entries = ref_api.entries()
    for name in ("new_ref", "get", "set", "swap", "addupdate"):
      self.assertIn(f"jax.ref.{name}", entries)
    params = inspect.signature(jax.ref.new_ref).parameters
    for p in params:
      self.assertIn(f"new_ref({p}=)", entries)
    self.assertEqual("kind" in params, ref_api.NEW_REF_TAKES_KIND)

  def test_kinds_are_found_in_jax_source(self):
    if not ref_api.NEW_REF_TAKES_KIND:
      self.assertEqual(ref_api.KINDS, ())
      return
    self.assertIn("no_grad_no_remat", ref_api.discovered_kinds())
    # Each discovered kind makes a ref whose aval carries it.
    for kind in ref_api.KINDS:
      r = jax.new_ref(1.0, kind=kind)
      self.assertEqual(jax.typeof(r).kind, kind)

  def test_kind_constants_are_read_from_comparisons(self):
    src = ("if aval.kind == 'a': pass\n"
           "if 'b' != kind: pass\n"
           "if ref.kind in ('c', 'd'): pass\n"
           "if dtype.char == 'e': pass\n"
           "if mem_kind == 'f': pass\n")
    self.assertEqual(ref_api._kind_constants(src), {"a", "b", "c", "d"})

  def test_names_about_refs(self):
    for name in ("new_ref", "Ref", "AbstractRef", "free_ref", "with_refs"):
      self.assertTrue(ref_api._names_a_ref(name), msg=name)
    for name in ("CompilerEffortLevel", "freeze", "prefer", "preferred"):
      self.assertFalse(ref_api._names_a_ref(name), msg=name)

  def test_every_covered_feature_is_generated(self):
    both = self.gen1 + self.gen2
    for feature in sorted(set(ref_api.COVERED.values())):
      if _available(feature):
        self.assertGreater(both[feature], 0, msg=feature)
      else:
        self.assertEqual(both[feature], 0, msg=feature)

  def test_feature_shares(self):
    # Kinds and with_refs in a good share of programs of both generators;
    # aliased programs (whose remat run may only raise) a small one.
    n = len(SEEDS)
    for counts in (self.gen1, self.gen2):
      if ref_api.NO_GRAD_KIND:
        self.assertBetween(counts["kind"] / n, 0.15, 0.7)
      if ref_api.HAS_WITH_REFS:
        self.assertBetween(counts["with_refs"] / n, 0.1, 0.4)
      self.assertBetween(counts["aliased"] / n, 0.02, 0.12)
      self.assertBetween(counts["tied"] / n, 0.05, 0.35)
      self.assertBetween((counts["while_loop"] + counts["fori_dynamic"]) / n,
                         0.05, 0.4)

  def test_tags_match_the_source(self):
    markers = dict(kind="kind='no_grad_no_remat'", with_refs="GRAD_SPECS = ('",
                   ref_primal="REF_PRIMALS = ('", aliased="ALIASED = True",
                   while_loop="lax.while_loop(", freeze="jax.ref.freeze(",
                   free_ref="jax.ref.free_ref(", empty_ref="jax.ref.empty_ref(",
                   ref_get="jax.ref.get(", ref_set="jax.ref.set(",
                   swap="jax.ref.swap(", addupdate="jax.ref.addupdate(")
    for module in (gen, gen2):
      for seed in SEEDS[:100]:
        program = module.generate(seed)
        src = program.source()
        for tag, marker in markers.items():
          self.assertEqual(tag in program.features, marker in src,
                           msg=f"{module.__name__} seed {seed}: {tag}")


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
