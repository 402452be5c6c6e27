"""Queries on jaxprs and their ref effects.

The ground floor of the package: every other module may import this one, and
it imports nothing of ours except `_compat`.
"""
from __future__ import annotations

import functools

import numpy as np

from jax._src import core
from jax._src import custom_derivatives
from jax._src.state.types import AbstractRef, AccumEffect, RefEffect, WriteEffect

from jax_remat_refs import _compat


CUSTOM_RULE_PRIMITIVES = (custom_derivatives.custom_vjp_call_p,
                          custom_derivatives.custom_jvp_call_p)


def is_ref(x) -> bool:
  """Whether a jaxpr atom, an aval or a value is a ref."""
  aval = x if isinstance(x, core.AbstractValue) else getattr(x, "aval", None)
  if aval is None:
    aval = core.typeof(x)
  return isinstance(aval, AbstractRef)


def ref_effect_vars(effects, binders, kinds=(RefEffect,)) -> set:
  """The vars among `binders` that the `kinds` effects among `effects` touch
  (`effects` and `binders` of one equation, or of one jaxpr: then `binders`
  is its constvars followed by its invars)."""
  return {_compat.effect_var(e, binders) for e in effects
          if isinstance(e, kinds)}


def ref_inputs_with_effects(jaxpr: core.Jaxpr,
                            kinds=(RefEffect,)) -> list[bool]:
  """For each input of `jaxpr`: whether it is a ref on which `jaxpr` has an
  effect of one of `kinds` (by default: reads, writes or accumulates)."""
  touched = ref_effect_vars(jaxpr.effects, [*jaxpr.constvars, *jaxpr.invars],
                            kinds)
  return [v in touched for v in jaxpr.invars]


def used_inputs(jaxpr: core.Jaxpr) -> list[bool]:
  """For each input of `jaxpr`: whether an equation or an output uses it."""
  used = {v for eqn in jaxpr.eqns for v in eqn.invars
          if isinstance(v, core.Var)}
  used.update(v for v in jaxpr.outvars if isinstance(v, core.Var))
  return [v in used for v in jaxpr.invars]


def written_ref_inputs(jaxpr: core.Jaxpr) -> list[bool]:
  """For each input of `jaxpr`: a ref it writes or accumulates into."""
  return ref_inputs_with_effects(jaxpr, (WriteEffect, AccumEffect))


def has_ref_effects(jaxpr: core.Jaxpr) -> bool:
  """Whether `jaxpr` reads, writes or accumulates into an input ref, or makes
  refs of its own outside custom_vjp / custom_jvp functions (refs that those
  make and use inside are theirs: the function is pure from outside)."""
  return any(ref_inputs_with_effects(jaxpr)) or (
      core.internal_mutable_array_effect in jaxpr.effects and
      _makes_refs(jaxpr))


def _makes_refs(jaxpr: core.Jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if (eqn.primitive in CUSTOM_RULE_PRIMITIVES or
        core.internal_mutable_array_effect not in eqn.effects):
      continue
    subs = list(core.jaxprs_in_params(eqn.params))
    if not subs or any(_makes_refs(sub) for sub in subs):
      return True
  return False


def describe_input(jaxpr: core.Jaxpr, i: int) -> str:
  """'argument y' / 'closed-over ref' / 'input #i', with the ref's type."""
  names = jaxpr.debug_info.arg_names if jaxpr.debug_info else None
  aval = jaxpr.invars[i].aval
  inner = aval.inner_aval if hasattr(aval, "inner_aval") else aval
  if names is not None and i < len(names):
    what = f"argument {names[i]}" if names[i] else "closed-over ref"
  else:
    what = f"input #{i}"
  return f"{what} of type Ref{{{inner.str_short()}}}"


def find_eqn(jaxpr: core.Jaxpr, pred) -> core.JaxprEqn | None:
  """The first equation of `jaxpr` or of a jaxpr nested in it satisfying
  `pred`, in program order."""
  for eqn in jaxpr.eqns:
    if pred(eqn):
      return eqn
    for sub in core.jaxprs_in_params(eqn.params):
      found = find_eqn(sub, pred)
      if found is not None:
        return found
  return None


def first_access(jaxpr: core.Jaxpr, var: core.Var, kinds=(RefEffect,)):
  """The first equation of `jaxpr` with an effect of `kinds` on input `var`."""
  for eqn in jaxpr.eqns:
    if var in ref_effect_vars(eqn.effects, eqn.invars, kinds):
      return eqn
  return None


# Pure integer/boolean scalar arithmetic: what state discharge emits to
# normalize static indices (`i < 0`, `i + n`, `select_n`) for every `r[k]`.
_FOLDABLE = frozenset({
    "lt", "le", "gt", "ge", "eq", "ne", "add", "sub", "mul", "neg", "max",
    "min", "select_n", "and", "or", "not", "convert_element_type"})


def _int_scalar(aval) -> bool:
  return (isinstance(aval, core.ShapedArray) and aval.shape == () and
          np.dtype(aval.dtype).kind in "iub")


def fold_index_literals(jaxpr: core.Jaxpr) -> core.Jaxpr:
  """`jaxpr` with each top-level equation of integer or boolean scalar
  arithmetic on literals replaced by its value, computed by the primitive
  itself (equations that use it see a literal; it is dropped)."""
  env: dict = {}
  sub = lambda a: env.get(a, a) if isinstance(a, core.Var) else a
  eqns = []
  for eqn in jaxpr.eqns:
    invars = [sub(a) for a in eqn.invars]
    foldable = (
        eqn.primitive.name in _FOLDABLE and invars and not eqn.effects and
        all(isinstance(a, core.Literal) and _int_scalar(a.aval)
            for a in invars) and
        all(_int_scalar(v.aval) for v in eqn.outvars))
    outs = None
    if foldable:
      ins = tuple((np.asarray(a.val).item(), a.aval) for a in invars)
      try:
        outs = _fold(eqn.primitive, ins, tuple(sorted(eqn.params.items())))
      except TypeError:  # a param that does not hash: keep the equation
        pass
      if outs is not None:
        env.update((v, core.Literal(val, v.aval)) for v, val in
                   zip(eqn.outvars, outs))
        continue
    eqns.append(eqn.replace(invars=invars) if invars != eqn.invars else eqn)
  if not env:
    return jaxpr
  return jaxpr.replace(eqns=eqns, outvars=[sub(a) for a in jaxpr.outvars])


@functools.lru_cache(maxsize=4096)
def _fold(primitive, ins, params):
  """The outputs, as numpy scalars, of `primitive` applied to the scalars
  `ins` ((value, aval) pairs); the same few recur in every index."""
  with core.eval_context():
    outs = primitive.bind(*(np.asarray(v, aval.dtype) for v, aval in ins),
                          **dict(params))
  outs = outs if primitive.multiple_results else [outs]
  return tuple(np.asarray(o)[()] for o in outs)
