"""Remat of a body with ref effects, in value form.

By JAX's state-discharge semantics (what `jit` lowering does), a body
``f(x, r)`` with effects on refs ``r`` is the same program as::

    v = r[...]                     # read every ref used once, at entry
    y, v_new = f_pure(x, v)        # the discharged body: values in, values out
    r[...] = v_new                 # write back the refs the body writes

`remat_bind` binds `remat_p` in this form. The remat then wraps a pure
function, which upstream's rules rematerialize correctly under every
transformation; the reads and the write-back sit outside it and run once, in
the forward pass; the rematerialization sees ``v``, the values at remat
entry. Nothing here special-cases grad, vmap, loops or nesting: a nested
remat was put in value form when it was traced, and an enclosing discharge
takes any other ref-effectful equation (cond, scan, jit, a ``"replay"``
remat) through JAX's own discharge rules.

A body whose refs are only passed on (no read, write or ref of its own) is
bound as it is. Refs of kind ``"no_grad_no_remat"`` keep their meaning
because their discharged values take no gradient (`_fixes`). Three things
value form cannot express are handled before it:
* the same ref reaching the body at two inputs (passed twice, or closed over
  and passed) is JAX's aliasing error, as for `jit` (and for `checkpoint`
  itself from JAX 0.11); with `jax_mutable_array_checks` off the two inputs
  are merged into one, and a body that hands the ref on to a nested call
  (a loop, a jit) under both names is a `RematRefError`, since that call
  would see two refs;
* a `custom_vjp` / `custom_jvp` function that takes refs or makes its own
  has no discharged form that keeps its custom rule; such a remat body runs
  without remat (as if undecorated: effects once, residuals saved) and a
  `RematRefWarning` says so;
* what JAX rejects in the body as it is (a freeze of a ref the body did not
  make; eagerly, a ref made in a memory space JAX supports only in `jit`) is
  rejected as JAX rejects it.
"""
from __future__ import annotations

import numpy as np

from jax._src import ad_checkpoint as ac
from jax._src import config
from jax._src import core
from jax._src import linear_util as lu
from jax._src.util import weakref_lru_cache
from jax._src.interpreters import partial_eval as pe
from jax._src.state import primitives as state_primitives

from jax_remat_refs import _compat
from jax_remat_refs import _errors
from jax_remat_refs import _jaxpr_util as ju
from jax_remat_refs import _report
from jax_remat_refs import _semantics as sem

remat_p = ac.remat_p
UPSTREAM_BIND = _compat.UPSTREAM_REMAT_BIND

# --------------------------------------------------------------------------
# bind

def remat_bind(*args, jaxpr, prevent_cse, differentiated, policy):
  if not ju.has_ref_effects(jaxpr):
    # A pure body, or one whose refs are only passed on (e.g. to a custom_vjp
    # whose backward rule writes gradients into them): no effect to repeat,
    # and upstream's equation is right.
    return UPSTREAM_BIND(*args, jaxpr=jaxpr, prevent_cse=prevent_cse,
                         differentiated=differentiated,
                         policy=sem.unwrap_policy(policy))
  touched = ju.ref_inputs_with_effects(jaxpr)
  mode = sem.mode_of(policy) if any(touched) else sem.ONCE
  if mode == sem.FORBID:
    replayable = [t and getattr(v.aval, "kind", None) != _compat.NO_GRAD_NO_REMAT
                  for t, v in zip(touched, jaxpr.invars)]
    if any(replayable):  # a no_grad_no_remat ref is forward-only anyway
      _errors.raise_forbidden(jaxpr, replayable.index(True))
  if mode == sem.REPLAY:
    return UPSTREAM_BIND(*args, jaxpr=jaxpr, prevent_cse=prevent_cse,
                         differentiated=differentiated,
                         policy=sem.replay_policy(policy))
  return remat_bind_value_form(args, jaxpr, prevent_cse, differentiated,
                               sem.unwrap_policy(policy))


def remat_bind_value_form(args, jaxpr, prevent_cse, differentiated, policy):
  """Binds a remat of `jaxpr`, a body with ref effects, in value form: reads
  each ref the body uses at entry, binds a remat of the discharged (pure)
  body on the values, and writes back the refs the body writes."""
  args, jaxpr, prevent_cse = _merge_aliased_refs(args, jaxpr, prevent_cse)
  custom = custom_rule_has_ref_effects(jaxpr)
  if custom is not None:
    _errors.warn_not_rematerialized(jaxpr, custom)
    return core.eval_jaxpr(jaxpr, (), *args)
  _check_refs_the_body_consumes_or_makes(jaxpr)
  pure, consts, discharged, written = remat_discharge(jaxpr)
  ins = list(args)
  for i in discharged:
    with _report.entry_read_scope(ju.describe_input(jaxpr, i)):
      ins[i] = state_primitives.ref_get(args[i], ())
  if isinstance(prevent_cse, tuple):
    prevent_cse = (False,) * len(consts) + prevent_cse
  outs = UPSTREAM_BIND(
      *consts, *ins, jaxpr=pure, prevent_cse=prevent_cse,
      differentiated=differentiated, policy=policy)
  n_out = len(jaxpr.outvars)
  for i, new_val in zip(written, outs[n_out:]):
    state_primitives.ref_set(args[i], (), new_val)
  return outs[:n_out]


def _check_refs_the_body_consumes_or_makes(jaxpr: core.Jaxpr) -> None:
  """What JAX rejects in the body as it stands, rejected as JAX does.

  A ref the body freezes that it did not make (value form would freeze a
  private copy, and the ref would live on): `RematRefError`, as `jit` rejects
  it too. A ref the body makes in a memory space (or pinned) that JAX only
  supports inside `jit`, when this remat runs eagerly: JAX's own error,
  which the discharged body would no longer reach."""
  inputs = set(jaxpr.invars)
  eager = not core.unsafe_am_i_under_a_jit()
  for eqn in jaxpr.eqns:
    if eqn.primitive is _compat.FREEZE_P and eqn.invars[0] in inputs:
      _errors.raise_frozen_input(jaxpr, eqn)
    if (eager and eqn.primitive is core.ref_p and
        (eqn.params.get("memory_space") is not None or eqn.params.get("pin"))):
      core.ref_p.impl(np.zeros((0,), np.float32), **eqn.params)


@weakref_lru_cache
def remat_discharge(jaxpr: core.Jaxpr):
  """The discharged body of a remat: (jaxpr, consts, discharged, written).

  Its inputs are the consts, then `jaxpr`'s inputs with each ref at
  positions `discharged` (every ref the body uses) replaced by its value; a
  ref the body does not use stays a ref, untouched (reading it would add an
  effect the body does not have). Its outputs are `jaxpr`'s, then the final
  values of the refs at positions `written` (the refs the body writes)."""
  discharge = [ju.is_ref(v) and used
               for v, used in zip(jaxpr.invars, ju.used_inputs(jaxpr))]
  discharged = tuple(i for i, d in enumerate(discharge) if d)
  written = tuple(i for i, w in enumerate(ju.written_ref_inputs(jaxpr)) if w)
  pure, consts = _compat.discharge_state(jaxpr, discharge)
  keep = [True] * len(jaxpr.outvars) + [i in written for i in discharged]
  pure = ju.fold_index_literals(pe.convert_constvars_jaxpr(pure))
  pure, _ = pe.dce_jaxpr(pure, keep, instantiate=True)
  return pure, consts, discharged, written


def _merge_aliased_refs(args, jaxpr, prevent_cse):
  """Pass a ref that arrives at several inputs once: value form reads each
  input separately and would lose the writes made through all but one."""
  first = {}
  index = []
  for i, a in enumerate(args):
    key = (id(core.get_referent(a)) if ju.is_ref(jaxpr.invars[i])
           else ("arg", i))
    index.append(first.setdefault(key, i))
  if index == list(range(len(args))):
    return args, jaxpr, prevent_cse
  if config.mutable_array_checks.value:
    i = next(i for i, j in enumerate(index) if j != i)
    _errors.raise_aliased(jaxpr, index[i], i)
  name = {v: jaxpr.invars[j] for v, j in zip(jaxpr.invars, index)}
  for eqn in jaxpr.eqns:
    refs = [name.get(v, v) for v in eqn.invars
            if isinstance(v, core.Var) and ju.is_ref(v)]
    if len(set(refs)) < len(refs):
      _errors.raise_aliased_nested(jaxpr, eqn)
  kept = sorted(set(index))
  merged = _merged_jaxpr(jaxpr, tuple(kept.index(j) for j in index))
  args = tuple(args[i] for i in kept)
  if isinstance(prevent_cse, tuple):
    prevent_cse = tuple(prevent_cse[i] for i in kept)
  return args, merged, prevent_cse


@weakref_lru_cache
def _merged_jaxpr(jaxpr: core.Jaxpr, source: tuple[int, ...]) -> core.Jaxpr:
  """`jaxpr` taking its i-th input from position `source[i]`."""
  avals = [None] * (max(source) + 1)
  for i, s in enumerate(source):
    avals[s] = jaxpr.invars[i].aval
  def body(*args):
    return core.eval_jaxpr(jaxpr, (), *(args[s] for s in source))
  dbg = jaxpr.debug_info.with_unknown_names() if jaxpr.debug_info else None
  merged, _, consts = pe.trace_to_jaxpr_dynamic(
      lu.wrap_init(body, debug_info=dbg), avals)
  assert not consts
  return merged


def custom_rule_has_ref_effects(jaxpr: core.Jaxpr):
  """A custom_vjp/custom_jvp equation (in `jaxpr` or nested in it) that takes
  or makes refs, or None. Value form would hand it the ref's value: neither
  its primal nor its rules could use the ref any more; and JAX's discharge of
  a custom_vjp function that makes refs inside replaces it by its primal
  (its rule is lost). Such bodies run without remat."""
  def pred(eqn):
    return (eqn.primitive in ju.CUSTOM_RULE_PRIMITIVES and
            (any(ju.is_ref(v) for v in eqn.invars) or
             core.internal_mutable_array_effect in eqn.effects))
  return ju.find_eqn(jaxpr, pred)
