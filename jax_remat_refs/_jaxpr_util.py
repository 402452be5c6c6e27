"""Queries on jaxprs and their ref effects.

The ground floor of the package: every other module may import this one, and
it imports nothing of ours except `_compat`.
"""
from __future__ import annotations

from typing import Iterator

from jax._src import core
from jax._src.state.types import AbstractRef, AccumEffect, RefEffect, WriteEffect

from jax_remat_refs import _compat


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


def _jaxpr_ref_effect_vars(jaxpr: core.Jaxpr, kinds) -> set:
  return ref_effect_vars(jaxpr.effects, [*jaxpr.constvars, *jaxpr.invars],
                         kinds)


def touched_ref_invars(jaxpr: core.Jaxpr) -> list[bool]:
  """For each input of `jaxpr`: a ref that the body reads or writes."""
  touched = _jaxpr_ref_effect_vars(jaxpr, (RefEffect,))
  return [v in touched for v in jaxpr.invars]


def written_ref_invars(jaxpr: core.Jaxpr) -> list[bool]:
  """For each input of `jaxpr`: a ref that the body writes or accumulates into."""
  written = _jaxpr_ref_effect_vars(jaxpr, (WriteEffect, AccumEffect))
  return [v in written for v in jaxpr.invars]


def takes_refs(jaxpr: core.Jaxpr) -> bool:
  """Whether some input of `jaxpr` is a ref."""
  return any(is_ref(v) for v in jaxpr.invars)


def has_refs(jaxpr: core.Jaxpr) -> bool:
  """Whether `jaxpr` takes refs or allocates refs of its own."""
  return (takes_refs(jaxpr) or
          core.internal_mutable_array_effect in jaxpr.effects)


def used_vars(jaxpr: core.Jaxpr) -> set:
  """The vars that `jaxpr`'s equations or outputs use."""
  used = {v for e in jaxpr.eqns for v in e.invars if isinstance(v, core.Var)}
  used.update(v for v in jaxpr.outvars if isinstance(v, core.Var))
  return used


def sub_jaxprs(params) -> Iterator[core.Jaxpr]:
  """The jaxprs among an equation's params (closed ones opened)."""
  for val in params.values():
    for v in (val if isinstance(val, (tuple, list)) else (val,)):
      if isinstance(v, _compat.JAXPR_TYPES):
        yield _compat.open_closed(v)[0]


def find_eqn(jaxpr: core.Jaxpr, pred) -> core.JaxprEqn | None:
  """The first equation of `jaxpr` or of a jaxpr nested in it satisfying
  `pred`, in program order."""
  for eqn in jaxpr.eqns:
    if pred(eqn):
      return eqn
    for sub in sub_jaxprs(eqn.params):
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
