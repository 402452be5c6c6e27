"""The ref API of the installed JAX, and what the fuzz generators do with it.

`entries()` lists what JAX exports for refs, read from JAX itself: every
public name of `jax.ref`, the top-level aliases of those names and any other
top-level ``jax`` name about refs, the public names of `jax.ad` (the
gradient-ref markers of ``with_refs``), the keyword parameters of `new_ref`
and `empty_ref`, the ref kinds (the string constants JAX's ref
implementation compares a ``kind`` against) and the ref methods of the
function `jax.vjp` returns. Each entry maps to the generator feature that
exercises it (`COVERED`, a tag of `FEATURES`) or to a one-line reason why
the generators leave it out (`EXCLUDED`); `gaps()` is what is neither, and
`tests/test_fuzz_menu.py` fails while it is not empty, so an entry a new JAX
adds shows up as a gap.

The probes below (`KINDS`, `HAS_WITH_REFS`, ...) are what the generators key
on: a feature is generated where the installed JAX has it, never by version.
"""
from __future__ import annotations

import ast
import functools
import inspect
import os
import re

import jax

# Feature tags a generated program may carry (`Program.features`), with what
# each one means. `tests/fuzz/run.py` reports their shares.
FEATURES = dict(
    kind='a ref of kind "no_grad_no_remat" (external or made inside)',
    with_refs="gradients accumulated into refs: jax.vjp(...)[1].with_refs(...)",
    aliased="one ref reaching a remat twice (passed twice, or closed over "
            "and passed)",
    tied="one remat-decorated function called on several refs, and on one "
         "ref twice in a row",
    while_loop="refs read and written in a lax.while_loop body",
    fori_dynamic="lax.fori_loop with a traced trip count (a while loop)",
    ref_primal="a ref as a differentiated primal of jax.vjp (its gradient "
               "accumulated through with_refs)",
    kind_diff_write="a differentiated value written into a kind ref",
    kind_diff_init="a kind ref made inside from a differentiated value",
    custom_own_refs="a custom_vjp / custom_jvp function that makes refs of "
                    "its own (its rule differs from its primal's derivative)",
    grad_value="with_refs given jax.ad.GradValue() for an argument",
    dont_want="with_refs given jax.ad.DontWant() for an argument",
    new_ref="a ref made inside the program (jax.new_ref in a body)",
    fori_static="lax.fori_loop with static trips (a scan)",
    ref_get="jax.ref.get(ref, idx)",
    ref_set="jax.ref.set(ref, idx, value)",
    swap="jax.ref.swap(ref, idx, value)",
    addupdate="jax.ref.addupdate(ref, idx, value)",
    freeze="jax.ref.freeze(ref): a ref made inside ends as its value",
    free_ref="jax.ref.free_ref(ref) after a ref's last use",
    empty_ref="jax.ref.empty_ref(type) inside jit, then written",
)

# Entry -> feature tag. Entries are named as `entries()` names them.
COVERED = {
    "jax.ref.new_ref": "new_ref",
    "jax.new_ref": "new_ref",
    "jax.ref.get": "ref_get",
    "jax.ref.set": "ref_set",
    "jax.ref.swap": "swap",
    "jax.ref.addupdate": "addupdate",
    "jax.ref.freeze": "freeze",
    "jax.freeze": "freeze",
    "jax.ref.free_ref": "free_ref",
    "jax.free_ref": "free_ref",
    "jax.ref.empty_ref": "empty_ref",
    "jax.empty_ref": "empty_ref",
    "new_ref(kind=)": "kind",
    "kind='no_grad_no_remat'": "kind",
    "vjp(...).with_refs": "with_refs",
    "jax.ad.GradValue": "grad_value",
    "jax.ad.DontWant": "dont_want",
    # What with_refs returns in place of a gradient: compared as pytrees.
    "jax.ad.GradRef": "with_refs",
    "jax.ad.DidntWant": "dont_want",
}

# Entry -> why the generators leave it out (one line each).
EXCLUDED = {
    "jax.ref.Ref": "a type, not an operation: every generated ref is one",
    "jax.Ref": "a type, not an operation: every generated ref is one",
    "jax.ref.AbstractRef": "the type of a ref's abstract value; no operation "
                           "of its own",
    "jax.ref": "the module itself; its members are entries",
    "jax.ref.ArrayRef": "JAX 0.7.x's old name of the Ref type",
    "jax.ArrayRef": "JAX 0.7.x's old name of the Ref type",
    "jax.ref.array_ref": "JAX 0.7.x's old name of new_ref (the same "
                         "function; new_ref is generated)",
    "jax.array_ref": "JAX 0.7.x's old name of new_ref (the same function; "
                     "new_ref is generated)",
    "new_ref(memory_space=)": "memory spaces are backend-specific (Pallas / "
                              "TPU); the fuzzers run on CPU",
    "empty_ref(memory_space=)": "memory spaces are backend-specific (Pallas / "
                                "TPU); the fuzzers run on CPU",
    "new_ref(pin=)": "a pinned ref is a linear value: JAX itself rejects "
                     "using its reads (AbstractLinVal into sin), with or "
                     "without remat",
    "empty_ref(pin=)": "a pinned ref is a linear value: JAX itself rejects "
                       "using its reads, with or without remat",
    "empty_ref(ty=)": "the type argument: always given (empty_ref feature)",
    "new_ref(init_val=)": "the initial value: always given (new_ref feature)",
}


def _public(obj):
  names = getattr(obj, "__all__", None)
  if names is None:
    names = [n for n in dir(obj) if not n.startswith("_")]
  return sorted(names)


def _names_a_ref(name):
  """Whether a word of `name` (split at underscores and capitals) is "ref"."""
  words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", name)
  return any(w.lower() in ("ref", "refs") for w in words)


def _keywords(fun, prefix):
  try:
    params = inspect.signature(fun).parameters
  except (TypeError, ValueError):
    return []
  return [f"{prefix}({p}=)" for p in params]


def _kind_constants(source: str) -> set:
  """String constants compared (==, !=, in) against a name or attribute
  called ``kind`` in `source`."""
  found = set()

  def is_kind(node):
    return ((isinstance(node, ast.Name) and node.id == "kind")
            or (isinstance(node, ast.Attribute) and node.attr == "kind"))

  def strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      return [s for e in node.elts for s in strings(e)]
    return []

  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Compare):
      continue
    operands = [node.left, *node.comparators]
    if any(is_kind(o) for o in operands):
      for o in operands:
        found.update(strings(o))
  return found


@functools.lru_cache(maxsize=None)
def discovered_kinds() -> tuple:
  """The ref kinds JAX's ref implementation knows: string constants that
  the modules of `jax._src.state` and the module defining `new_ref` compare
  a ``kind`` against."""
  from jax._src import state
  files = set()
  state_dir = os.path.dirname(state.__file__)
  files.update(os.path.join(state_dir, f) for f in os.listdir(state_dir)
               if f.endswith(".py"))
  new_ref_module = inspect.getmodule(inspect.unwrap(jax.ref.new_ref))
  if new_ref_module is not None and getattr(new_ref_module, "__file__", None):
    files.add(new_ref_module.__file__)
  kinds = set()
  for path in sorted(files):
    with open(path, encoding="utf-8") as fh:
      text = fh.read()
    if "kind" in text:
      kinds |= _kind_constants(text)
  return tuple(sorted(kinds))


def _vjp_object():
  _, f_vjp = jax.vjp(lambda x: x * 2.0, 1.0)
  return f_vjp


@functools.lru_cache(maxsize=None)
def entries() -> tuple:
  """Every ref API entry of the installed JAX (see the module docstring)."""
  out = []
  ref_objs = {}
  for name in _public(jax.ref):
    out.append(f"jax.ref.{name}")
    ref_objs[id(getattr(jax.ref, name))] = name
  for name in sorted(n for n in dir(jax) if not n.startswith("_")):
    obj = getattr(jax, name, None)
    if id(obj) in ref_objs or _names_a_ref(name):
      out.append(f"jax.{name}")
  ad_ns = getattr(jax, "ad", None)
  if ad_ns is not None:
    out += [f"jax.ad.{n}" for n in _public(ad_ns)]
  out += _keywords(jax.ref.new_ref, "new_ref")
  if hasattr(jax.ref, "empty_ref"):
    out += _keywords(jax.ref.empty_ref, "empty_ref")
  if NEW_REF_TAKES_KIND:
    out += [f"kind={k!r}" for k in discovered_kinds()]
  out += [f"vjp(...).{n}" for n in dir(_vjp_object())
          if not n.startswith("_") and _names_a_ref(n)]
  return tuple(dict.fromkeys(out))


def gaps() -> list:
  """Entries neither covered nor excluded."""
  return [e for e in entries() if e not in COVERED and e not in EXCLUDED]


# ---- probes the generators key on ---------------------------------------------

NEW_REF_TAKES_KIND = "kind" in inspect.signature(jax.ref.new_ref).parameters
# Kinds the generators use: the discovered ones new_ref accepts.
KINDS = discovered_kinds() if NEW_REF_TAKES_KIND else ()
NO_GRAD_KIND = "no_grad_no_remat" if "no_grad_no_remat" in KINDS else None
_AD = getattr(jax, "ad", None)
# `with_refs` returns a `GradRef` marker for a gradient accumulated into a
# ref: a pytree without leaves from JAX 0.10 (public in `jax.ad`); before, a
# leaf the oracle cannot compare, so the generators leave with_refs out there.
HAS_WITH_REFS = hasattr(_vjp_object(), "with_refs") and _AD is not None
HAS_GRAD_VALUE = HAS_WITH_REFS and hasattr(_AD, "GradValue")
HAS_DONT_WANT = HAS_WITH_REFS and hasattr(_AD, "DontWant")
HAS_FREEZE = hasattr(jax.ref, "freeze")
HAS_FREE_REF = hasattr(jax.ref, "free_ref")
HAS_EMPTY_REF = hasattr(jax.ref, "empty_ref")
HAS_REF_GET_SET = hasattr(jax.ref, "get") and hasattr(jax.ref, "set")


@functools.lru_cache(maxsize=None)
def vjp_takes_ref_primals() -> bool:
  """Whether `jax.vjp` differentiates with respect to a ref argument (its
  gradient accumulated through ``with_refs``): tried on a two-line function."""
  if not HAS_WITH_REFS or not HAS_GRAD_VALUE:
    return False
  import jax.numpy as jnp
  try:
    r = jax.new_ref(jnp.ones(2, jnp.float32))

    def f(x, r):
      r[...] = r[...] * x
      return jnp.sum(r[...])
    _, f_vjp = jax.vjp(f, jnp.float32(2.0), r)
    g = jax.new_ref(jnp.zeros(2, jnp.float32))
    f_vjp.with_refs(jax.ad.GradValue(), g)(jnp.float32(1.0))
    return bool(abs(float(g[0]) - 2.0) < 1e-6)
  except Exception:  # noqa: BLE001  (any failure: the feature is absent)
    return False


if __name__ == "__main__":
  for e in entries():
    what = (f"covered by {COVERED[e]}" if e in COVERED else
            f"excluded: {EXCLUDED[e]}" if e in EXCLUDED else "GAP")
    print(f"{e:32s} {what}")
  print("kinds:", KINDS, " with_refs:", HAS_WITH_REFS,
        " ref primals:", vjp_takes_ref_primals())
