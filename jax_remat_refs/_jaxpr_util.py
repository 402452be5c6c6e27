"""Queries on jaxprs and their ref effects.

The ground floor of the package: every other module may import this one, and
it imports nothing of ours except `_compat`.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

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
  binders = [*jaxpr.constvars, *jaxpr.invars]
  return ref_effect_vars(jaxpr.effects, binders, kinds)


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
