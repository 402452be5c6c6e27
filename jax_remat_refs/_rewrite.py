"""Jaxpr-to-jaxpr rewrites used by the remat rules.

Everything here works on `core.Jaxpr` values directly (new invars, new
equations, variable substitution); nothing is retraced. Rewrites are cached by
jaxpr identity with `weakref_lru_cache`, like JAX's own jaxpr transforms.
"""
from __future__ import annotations

import enum
from typing import Sequence

from jax._src import core
from jax._src import effects as effects_lib
from jax._src.interpreters import partial_eval as pe
from jax._src.state import primitives as state_primitives
from jax._src.state.types import AbstractRef, ReadEffect, WriteEffect
from jax._src.tree_util import tree_structure
from jax._src.util import weakref_lru_cache

from jax_remat_refs import _compat

get_p = state_primitives.get_p
swap_p = state_primitives.swap_p
addupdate_p = state_primitives.addupdate_p

_WHOLE_REF_TREE = tree_structure(())  # the indexer tree of `ref[...]`


def is_ref(v) -> bool:
  return isinstance(core.get_aval(v) if not isinstance(v, core.Var) else v.aval,
                    AbstractRef)


class RefUse(enum.Enum):
  """How a jaxpr uses one of its ref inputs."""
  UNUSED = 0
  WRITE_ONLY = 1   # only overwritten or accumulated into; old values unseen
  READ = 2         # its values may be observed


def _used_vars(jaxpr: core.Jaxpr) -> set[core.Var]:
  used = {v for e in jaxpr.eqns for v in e.invars if isinstance(v, core.Var)}
  used.update(v for v in jaxpr.outvars if isinstance(v, core.Var))
  return used


def _is_blind_write(eqn: core.JaxprEqn, used: set[core.Var]) -> bool:
  if eqn.primitive is addupdate_p:
    return True
  return eqn.primitive is swap_p and eqn.outvars[0] not in used


@weakref_lru_cache
def ref_uses(jaxpr: core.Jaxpr) -> tuple[RefUse, ...]:
  """Classify each invar of `jaxpr` (non-refs are UNUSED)."""
  used = _used_vars(jaxpr)
  uses = {v: RefUse.UNUSED for v in jaxpr.invars if isinstance(v.aval, AbstractRef)}
  for eqn in jaxpr.eqns:
    for pos, v in enumerate(eqn.invars):
      if not isinstance(v, core.Var) or v not in uses:
        continue
      if pos == 0 and _is_blind_write(eqn, used):
        uses[v] = max(uses[v], RefUse.WRITE_ONLY, key=lambda u: u.value)
      else:
        uses[v] = RefUse.READ
  for v in jaxpr.outvars:  # returned to the caller: treat as observed
    if isinstance(v, core.Var) and v in uses:
      uses[v] = RefUse.READ
  return tuple(uses.get(v, RefUse.UNUSED) for v in jaxpr.invars)


def _subst_effects(effs, env: dict) -> set:
  out = set()
  for e in effs:
    if (isinstance(e, effects_lib.JaxprInputEffect) and
        isinstance(e.input, core.Var) and e.input in env):
      e = e.replace(input=env[e.input])
    out.add(e)
  return out


def _subst_eqn(eqn: core.JaxprEqn, env: dict) -> core.JaxprEqn:
  if not any(isinstance(v, core.Var) and v in env for v in eqn.invars):
    return eqn
  invars = [env.get(v, v) if isinstance(v, core.Var) else v for v in eqn.invars]
  return eqn.replace(invars=invars, effects=_subst_effects(eqn.effects, env))


def _new_ref_eqn(val: core.Var, ref: core.Var) -> core.JaxprEqn:
  return core.new_jaxpr_eqn(
      [val], [ref], core.ref_p, _compat.new_ref_params(ref.aval),
      {core.internal_mutable_array_effect})


def _read_whole_eqn(ref: core.Var, val: core.Var) -> core.JaxprEqn:
  return core.new_jaxpr_eqn([ref], [val], get_p, dict(tree=_WHOLE_REF_TREE),
                            {ReadEffect(ref)})


def _write_whole_eqn(ref: core.Var, val: core.Var) -> core.JaxprEqn:
  return core.new_jaxpr_eqn([ref, val], [core.DropVar(val.aval)], swap_p,
                            dict(tree=_WHOLE_REF_TREE), {WriteEffect(ref)})


def _finish(jaxpr: core.Jaxpr, invars, outvars, eqns) -> core.Jaxpr:
  effs = pe.make_jaxpr_effects(jaxpr.constvars, invars, outvars, eqns)
  new = jaxpr.replace(invars=invars, outvars=outvars, eqns=eqns, effects=effs,
                      debug_info=jaxpr.debug_info.with_unknown_names())
  return new


def replace_arg_refs_with_vals(jaxpr: core.Jaxpr, snapshot: Sequence[int],
                               drop: Sequence[int] = ()) -> core.Jaxpr:
  """Make `jaxpr` pure in some of its ref inputs.

  For each position in `snapshot`, the ref invar becomes a value invar (its
  contents) and the body allocates a private ref from it, so the body's
  reads and writes no longer reach the caller's ref. Each position in `drop`
  must be a WRITE_ONLY ref: its writes are deleted along with the invar.
  """
  return _replace_arg_refs_with_vals(jaxpr, tuple(snapshot), tuple(drop))


@weakref_lru_cache
def _replace_arg_refs_with_vals(jaxpr: core.Jaxpr, snapshot: tuple[int, ...],
                                drop: tuple[int, ...]) -> core.Jaxpr:
  env: dict[core.Var, core.Var] = {}
  prologue: list[core.JaxprEqn] = []
  invars = list(jaxpr.invars)
  for i in snapshot:
    old = jaxpr.invars[i]
    val = core.Var(old.aval.inner_aval)
    fresh = core.Var(old.aval)
    prologue.append(_new_ref_eqn(val, fresh))
    env[old] = fresh
    invars[i] = val
  dropped = {jaxpr.invars[i] for i in drop}
  eqns = [_subst_eqn(e, env) for e in jaxpr.eqns
          if not (e.invars and e.invars[0] in dropped)]
  invars = [v for i, v in enumerate(invars) if i not in set(drop)]
  return _finish(jaxpr, invars, jaxpr.outvars, prologue + eqns)


@weakref_lru_cache
def append_entry_reads(jaxpr: core.Jaxpr, positions: tuple[int, ...]
                       ) -> core.Jaxpr:
  """Add outputs holding the contents of the ref invars at `positions`, read
  before any equation of `jaxpr` runs (snapshots taken at entry)."""
  reads, outs = [], []
  for i in positions:
    ref = jaxpr.invars[i]
    val = core.Var(ref.aval.inner_aval)
    reads.append(_read_whole_eqn(ref, val))
    outs.append(val)
  return _finish(jaxpr, jaxpr.invars, [*jaxpr.outvars, *outs],
                 reads + list(jaxpr.eqns))


@weakref_lru_cache
def touches_input_refs(jaxpr: core.Jaxpr) -> bool:
  """Whether `jaxpr` has effects on refs it takes as inputs."""
  return any(isinstance(e, effects_lib.JaxprInputEffect) and
             isinstance(e.input, core.Var) and e.input in jaxpr.invars
             for e in jaxpr.effects)
