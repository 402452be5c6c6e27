"""Jaxpr-to-jaxpr rewrites used by the remat rules.

Everything here works on `core.Jaxpr` values directly (new invars, new
equations, variable substitution); nothing is retraced. Rewrites are cached by
jaxpr identity with `weakref_lru_cache`, like JAX's own jaxpr transforms.
"""
from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

from jax._src import core
from jax._src import effects as effects_lib
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.state import primitives as state_primitives
from jax._src.state.types import (AbstractRef, AccumEffect, ReadEffect,
                                  RefEffect, WriteEffect)
from jax._src.tree_util import tree_structure
from jax._src.util import weakref_lru_cache

from jax._src.ad_checkpoint import remat_p

from jax_remat_refs import _compat
from jax_remat_refs import _semantics as sem

get_p = state_primitives.get_p
swap_p = state_primitives.swap_p
addupdate_p = state_primitives.addupdate_p
ACCESS_PRIMITIVES = (get_p, swap_p, addupdate_p)

_WHOLE_REF_TREE = tree_structure(())  # the indexer tree of `ref[...]`


def is_ref(v) -> bool:
  aval = v.aval if isinstance(v, (core.Var, core.Literal)) else core.typeof(v)
  return isinstance(aval, AbstractRef)


class RefUse(enum.Enum):
  """How a jaxpr uses one of its ref inputs."""
  UNUSED = 0
  WRITE_ONLY = 1   # only overwritten or accumulated into; old values unseen
  READ = 2         # its values may be observed


def _var_in(x, vars_) -> bool:
  """`x in vars_` for any atom (Literals are not hashable on every version)."""
  return isinstance(x, core.Var) and x in vars_


def used_vars(jaxpr: core.Jaxpr) -> set[core.Var]:
  used = {v for e in jaxpr.eqns for v in e.invars if isinstance(v, core.Var)}
  used.update(v for v in jaxpr.outvars if isinstance(v, core.Var))
  return used


def _is_blind_write(eqn: core.JaxprEqn, used: set[core.Var]) -> bool:
  if eqn.primitive is addupdate_p:
    return True
  return eqn.primitive is swap_p and not _var_in(eqn.outvars[0], used)


@weakref_lru_cache
def ref_uses(jaxpr: core.Jaxpr) -> tuple[RefUse, ...]:
  """Classify each invar of `jaxpr` (non-refs are UNUSED)."""
  used = used_vars(jaxpr)
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


def _no_replay_on(eqn: core.JaxprEqn, private: set) -> core.JaxprEqn:
  """A nested remat taking one of our private copies runs in mode "once".

  The private copies stand for the caller's refs, whose effects a "once"
  remat promises to run once; a nested "replay" remat must not replay them
  (inside a "once" remat, the whole body is transparent).
  """
  policy = eqn.params.get("policy")
  if (eqn.primitive is not remat_p or
      not isinstance(policy, sem.RefEffectsPolicy) or
      policy.mode != sem.REPLAY or
      not any(_var_in(v, private) for v in eqn.invars)):
    return eqn
  once = sem.RefEffectsPolicy(sem.ONCE, policy.base, policy.ref_labels)
  return eqn.replace(params=dict(eqn.params, policy=once))


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
  return jaxpr.replace(invars=invars, outvars=outvars, eqns=eqns, effects=effs,
                       debug_info=jaxpr.debug_info.with_unknown_names())


class RefPlan(NamedTuple):
  """What the rematerializing jaxpr gets instead of some of its ref inputs.

  snapshot: ref invar positions replaced by the ref's contents at entry (the
    body allocates a private ref from them);
  drop: ref invar positions removed, with every access to them;
  saved_reads: outputs of reads of dropped refs, which become leading invars
    (residuals: the values the forward pass read);
  keep_real: snapshot positions whose caller ref the body also hands to the
    backward pass (a `custom_vjp` residual, seen as a `custom_lin` operand):
    the invar stays the caller's ref, used only by those `custom_lin`
    equations, and the snapshot becomes a new trailing invar.
  """
  snapshot: tuple[int, ...]
  drop: tuple[int, ...]
  saved_reads: tuple[core.Var, ...]
  keep_real: tuple[int, ...] = ()


def _nbytes(aval) -> int:
  if not core.is_constant_shape(aval.shape):
    return np.iinfo(np.int64).max  # symbolic: never cheaper than a snapshot
  try:
    itemsize = np.dtype(aval.dtype).itemsize
  except TypeError:  # extended dtypes (PRNG keys): count their physical size
    phys = core.physical_aval(aval)
    return _nbytes(phys)
  return int(np.prod(aval.shape, dtype=np.int64)) * itemsize


def _accesses_only_at_top_level(jaxpr: core.Jaxpr, ref: core.Var,
                                used: set[core.Var]) -> bool:
  for eqn in jaxpr.eqns:
    if ref not in eqn.invars:
      continue
    if eqn.primitive not in (get_p, swap_p, addupdate_p) or eqn.invars[0] is not ref:
      return False
    if ref in eqn.invars[1:]:
      return False
    if eqn.primitive is swap_p and _var_in(eqn.outvars[0], used):
      return False  # a swap whose old value is used: keep it simple
  return ref not in jaxpr.outvars


def _live_reads(jaxpr: core.Jaxpr, refs: set[core.Var]) -> list[core.JaxprEqn]:
  """The reads of `refs` whose values the jaxpr needs once every write to
  `refs` is deleted."""
  live = {v for v in jaxpr.outvars if isinstance(v, core.Var)}
  reads = []
  for eqn in reversed(jaxpr.eqns):
    touches = bool(eqn.invars) and _var_in(eqn.invars[0], refs)
    if touches and eqn.primitive is not get_p:
      continue  # a write to a ref we drop
    needed = any(_var_in(v, live) for v in eqn.outvars)
    if not needed and not touches and eqn.effects:
      needed = True  # other effects stay, and so do their inputs
    if needed:
      if touches:
        reads.append(eqn)
      live.update(v for v in eqn.invars if isinstance(v, core.Var))
  return reads[::-1]


@weakref_lru_cache
def plan_ref_inputs(jaxpr: core.Jaxpr, candidates: tuple[int, ...]) -> RefPlan:
  """Choose, for each caller-owned ref input of a rematerializing jaxpr, the
  cheapest way to keep the caller's ref out of it:

  * a ref whose values are never observed is dropped (its writes are dead:
    they already happened in the forward pass);
  * a ref accessed only by top-level reads and writes whose needed reads are
    no larger than the ref is dropped, and the values of those reads, taken in
    the forward pass, are passed in instead (the recomputation runs the same
    accesses from the same state, so it would read the same values);
  * otherwise the ref's contents at entry are passed in (a snapshot).
  """
  uses = ref_uses(jaxpr)
  used = used_vars(jaxpr)
  snapshot, drop, simple, keep_real = [], [], {}, []
  for i in candidates:
    ref = jaxpr.invars[i]
    if uses[i] is RefUse.UNUSED:
      continue
    lin, other = _split_custom_lin_uses(jaxpr, ref)
    if lin:  # the backward pass gets the caller's ref itself
      if other:
        snapshot.append(i)
        keep_real.append(i)
      continue
    if uses[i] is RefUse.WRITE_ONLY:
      drop.append(i)
    elif _accesses_only_at_top_level(jaxpr, ref, used):
      simple[ref] = i
    else:
      snapshot.append(i)
  # Which reads are needed depends on which refs' writes are deleted; shrink
  # the set of refs to drop until every one of them is still worth dropping.
  saved: list[core.Var] = []
  while simple:
    reads = _live_reads(jaxpr, set(simple))
    costly = {ref for ref in simple
              if sum(_nbytes(e.outvars[0].aval) for e in reads
                     if e.invars[0] is ref) > _nbytes(ref.aval.inner_aval)}
    if not costly:
      saved = [e.outvars[0] for e in reads]
      drop.extend(simple.values())
      break
    snapshot.extend(simple.pop(ref) for ref in costly)
  return RefPlan(tuple(sorted(snapshot)), tuple(sorted(drop)), tuple(saved),
                 tuple(keep_real))


def _split_custom_lin_uses(jaxpr: core.Jaxpr, ref: core.Var):
  """(uses of `ref` by `custom_lin` equations, its other uses)."""
  lin, other = [], []
  for eqn in jaxpr.eqns:
    if any(v is ref for v in eqn.invars):
      (lin if eqn.primitive is ad.custom_lin_p else other).append(eqn)
  if any(v is ref for v in jaxpr.outvars):
    other.append(None)
  return lin, other


def apply_ref_plan(jaxpr: core.Jaxpr, plan: RefPlan) -> core.Jaxpr:
  """Rewrite a rematerializing jaxpr by `plan` (see `RefPlan`).

  Invars become [*plan.saved_reads, *invars, *keep_real snapshots], with the
  other snapshot positions holding values and dropped positions removed.
  """
  return _apply_ref_plan(jaxpr, plan)


@weakref_lru_cache
def _apply_ref_plan(jaxpr: core.Jaxpr, plan: RefPlan) -> core.Jaxpr:
  env: dict[core.Var, core.Var] = {}
  prologue: list[core.JaxprEqn] = []
  invars = list(jaxpr.invars)
  trailing = []
  for i in plan.snapshot:
    old = jaxpr.invars[i]
    val = core.Var(old.aval.inner_aval)
    fresh = core.Var(old.aval)
    prologue.append(_new_ref_eqn(val, fresh))
    env[old] = fresh
    if i in plan.keep_real:
      trailing.append(val)
    else:
      invars[i] = val
  dropped = {jaxpr.invars[i] for i in plan.drop}
  private = set(env.values())
  eqns = [e if e.primitive is ad.custom_lin_p else
          _no_replay_on(_subst_eqn(e, env), private)
          for e in jaxpr.eqns if not (e.invars and _var_in(e.invars[0], dropped))]
  drop = set(plan.drop)
  invars = [*plan.saved_reads, *(v for i, v in enumerate(invars) if i not in drop),
            *trailing]
  new = _finish(jaxpr, invars, jaxpr.outvars, prologue + eqns)
  if drop:  # what computed the dropped writes' values and indices is dead now
    new, _ = pe.dce_jaxpr(new, [True] * len(new.outvars), instantiate=True)
  return new


def append_outvars(jaxpr: core.Jaxpr, outvars) -> core.Jaxpr:
  if not outvars:
    return jaxpr
  return jaxpr.replace(outvars=[*jaxpr.outvars, *outvars])


def move_outvars_last(jaxpr: core.Jaxpr, start: int, count: int) -> core.Jaxpr:
  """`jaxpr` with outputs `start .. start+count-1` moved behind the others."""
  outs = list(jaxpr.outvars)
  outs = outs[:start] + outs[start + count:] + outs[start:start + count]
  return jaxpr.replace(outvars=outs)


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


@weakref_lru_cache
def lift_constant_tangent_writes(jaxpr: core.Jaxpr, n_nonlinear: int
                                 ) -> tuple[core.Jaxpr, int]:
  """Give each write of a non-linear value into a linear ref its own new
  (trailing) invar.

  In a linear jaxpr whose first `n_nonlinear` invars are non-linear, a value
  written into a tangent ref without depending on a linear input is a zero
  tangent (JAX instantiates symbolic zeros this way). The transpose rules of
  `swap`/`addupdate` expect the written value to be linear; feeding it as a
  fresh linear input whose cotangent is discarded transposes it correctly.
  Returns the jaxpr and the number of invars added.
  """
  nonlinear = {*jaxpr.constvars, *jaxpr.invars[:n_nonlinear]}
  added: list[core.Var] = []
  eqns = []
  for eqn in jaxpr.eqns:
    if (eqn.primitive in (swap_p, addupdate_p) and
        not _var_in(eqn.invars[0], nonlinear) and
        (isinstance(eqn.invars[1], core.Literal) or
         _var_in(eqn.invars[1], nonlinear))):
      fresh = core.Var(eqn.invars[1].aval)
      added.append(fresh)
      eqn = eqn.replace(invars=[eqn.invars[0], fresh, *eqn.invars[2:]])
    eqns.append(eqn)
  if not added:
    return jaxpr, 0
  return _finish(jaxpr, [*jaxpr.invars, *added], jaxpr.outvars, eqns), len(added)


@weakref_lru_cache
def alias_invars(jaxpr: core.Jaxpr, aliases: tuple[tuple[int, int], ...]
                 ) -> core.Jaxpr:
  """For each (j, i) in `aliases`, make the body use invar i where it used
  invar j (j stays, unused): inputs j and i are the same ref."""
  env = {jaxpr.invars[j]: jaxpr.invars[i] for j, i in aliases}
  eqns = [_subst_eqn(e, env) for e in jaxpr.eqns]
  outvars = [env.get(v, v) if isinstance(v, core.Var) else v
             for v in jaxpr.outvars]
  return _finish(jaxpr, jaxpr.invars, outvars, eqns)


def ref_aliases(values) -> tuple[tuple[int, int], ...]:
  """(j, i) pairs, i < j, of positions holding the same ref object (None
  entries are not refs)."""
  first: dict[int, int] = {}
  pairs = []
  for j, v in enumerate(values):
    if v is None:
      continue
    i = first.setdefault(id(v), j)
    if i != j:
      pairs.append((j, i))
  return tuple(pairs)


def inline(snippet: core.Jaxpr, args) -> tuple[list[core.JaxprEqn], list]:
  """The equations of a freshly traced, consts-free `snippet` applied to the
  atoms `args`, and the atoms holding its outputs."""
  env = dict(zip(snippet.invars, args))
  eqns = [_subst_eqn(e, env) for e in snippet.eqns]
  outs = [env.get(v, v) if isinstance(v, core.Var) else v
          for v in snippet.outvars]
  return eqns, outs


class ReadOnlyChecks(NamedTuple):
  """Read-only ref inputs the rematerializing jaxpr keeps (`positions`), and
  the outputs of their reads (`reads`), each verified against the checksum
  the forward pass saved; `labels` name the ref of each read."""
  positions: tuple[int, ...]
  reads: tuple[core.Var, ...]
  labels: tuple[str, ...]


def plan_read_only_checks(jaxpr: core.Jaxpr, candidates, label
                          ) -> ReadOnlyChecks:
  """Among the caller-owned ref inputs at `candidates`, those declared
  read-only that the body only reads, at top level. (A read-only ref handed
  to nested control flow is treated like any other ref.)"""
  from jax_remat_refs import _read_only
  positions, reads, labels = [], [], []
  for i in candidates:
    ref = jaxpr.invars[i]
    if not _read_only.is_read_only(ref.aval):
      continue
    vals = _read_only.checked_reads(jaxpr, ref)
    if vals is not None:
      positions.append(i)
      reads.extend(vals)
      labels.extend([label(i)] * len(vals))
  return ReadOnlyChecks(tuple(positions), tuple(reads), tuple(labels))


@weakref_lru_cache
def add_read_only_checks(jaxpr: core.Jaxpr, checks: ReadOnlyChecks
                         ) -> core.Jaxpr:
  """After the body, compare each checked read's value with the checksum the
  forward pass saved (a new trailing invar each); a mismatch raises."""
  from jax_remat_refs import _read_only
  saved, epilogue = [], []
  for x, label in zip(checks.reads, checks.labels):
    ck = core.Var(_read_only.CHECKSUM_AVAL)
    eqns, _ = inline(_read_only.verify_jaxpr(x.aval, label), [ck, x])
    saved.append(ck)
    epilogue.extend(eqns)
  return _finish(jaxpr, [*jaxpr.invars, *saved], jaxpr.outvars,
                 list(jaxpr.eqns) + epilogue)


@weakref_lru_cache
def append_checksums(jaxpr: core.Jaxpr, values: tuple[core.Var, ...]
                     ) -> core.Jaxpr:
  """Add outputs holding checksums of `values`."""
  from jax_remat_refs import _read_only
  epilogue, outs = [], []
  for x in values:
    eqns, (ck,) = inline(_read_only.checksum_jaxpr(x.aval), [x])
    epilogue.extend(eqns)
    outs.append(ck)
  return _finish(jaxpr, jaxpr.invars, [*jaxpr.outvars, *outs],
                 list(jaxpr.eqns) + epilogue)


def ref_effect_inputs(effs, kinds=(RefEffect,)) -> set:
  """The vars of the refs that effects of the given kinds act on."""
  return {e.input for e in effs
          if isinstance(e, kinds) and isinstance(e.input, core.Var)}


WRITE_KINDS = (WriteEffect, AccumEffect)


def writes(jaxpr: core.Jaxpr) -> set:
  """The vars of the refs `jaxpr` writes or accumulates into."""
  return ref_effect_inputs(jaxpr.effects, WRITE_KINDS)
