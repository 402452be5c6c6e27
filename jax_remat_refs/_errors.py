"""Errors raised by jax_remat_refs, with messages that name remat and the ref."""
from __future__ import annotations

from jax._src import core
from jax._src import source_info_util
from jax._src.state.types import RefEffect

from jax_remat_refs import _rewrite


class RematRefError(Exception):
  """A remat-decorated function used a ref in a way that is not supported."""


def describe_input(jaxpr: core.Jaxpr, i: int) -> str:
  """'argument y' / 'closed-over ref' / 'input #i', with the ref's type."""
  names = jaxpr.debug_info.arg_names if jaxpr.debug_info else None
  aval = jaxpr.invars[i].aval
  ty = aval.inner_aval.str_short() if hasattr(aval, "inner_aval") else aval.str_short()
  if names is not None and i < len(names):
    what = f"argument {names[i]}" if names[i] else "closed-over ref"
  else:
    what = f"input #{i}"
  return f"{what} of type Ref{{{ty}}}"


def first_effect(jaxpr: core.Jaxpr, ref: core.Var, kinds=(RefEffect,)) -> str:
  """Source location of the first equation with an effect of `kinds` on
  `ref`."""
  for eqn in jaxpr.eqns:
    if ref in _rewrite.ref_effect_inputs(eqn.effects, kinds):
      return source_info_util.summarize(eqn.source_info)
  return "unknown location"


def raise_forbidden(jaxpr: core.Jaxpr) -> None:
  touched = _rewrite.ref_effect_inputs(jaxpr.effects)
  i = next(i for i, v in enumerate(jaxpr.invars) if v in touched)
  fun = jaxpr.debug_info.func_src_info if jaxpr.debug_info else "the function"
  raise RematRefError(
      f"jax.remat(ref_effects='forbid'): {fun} touches a ref it did not create, "
      f"the {describe_input(jaxpr, i)}; first access at "
      f"{first_effect(jaxpr, jaxpr.invars[i])}. With ref_effects='forbid' a "
      "remat-decorated function may only use refs it creates itself. Pass the "
      "value instead of the ref, or choose ref_effects='once' (effects happen "
      "in the forward pass only) or 'replay' (the rematerialization repeats "
      "them).")
