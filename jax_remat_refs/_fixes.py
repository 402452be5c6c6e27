"""Fixes of JAX rules that remat with refs reaches (also in programs without
remat or without refs), as (owner, key, replacement) entries for `_install`.

* `debug_callback`'s partial-eval rule: a callback replayed in the remat gets
  the inputs that the policy saved (upstream: `KeyError` with names policies,
  pure code too).
* `remat_p`'s DCE rule, where it drops effectful remats whose outputs are
  unused (0.10.x): one that keeps them.
* the `swap` transpose, where it accumulates into a constant swapped-in value
  (0.10.x): one that does not.
* `closed_call`'s type check, where it rejects the `name` a retraced call
  carries (0.10.x, with `jax_enable_checks`): one that ignores it.
* the discharge rules of `get`, `swap` and `addupdate`: on a ref of kind
  ``"no_grad_no_remat"`` the values they produce take no gradient, which is
  what the same program gives before discharge (no tangent ever flows through
  such a ref). Value form discharges a remat body's refs before AD, so this
  keeps the kind's meaning under remat.
* the JVP of `addupdate`, where it drops the update of a
  ``"no_grad_no_remat"`` ref altogether (0.10.x - 0.12.x: under `grad`,
  `jax.ref.addupdate` into such a ref is lost, also without remat): one that
  makes the update and gives it no tangent.
"""
from __future__ import annotations

from jax._src import ad_checkpoint as ac
from jax._src import ad_util
from jax._src import core
from jax._src import debugging
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.lax import lax
from jax._src.state import discharge as state_discharge
from jax._src.state import primitives as state_primitives

from jax_remat_refs import _compat

remat_p = ac.remat_p

UPSTREAM_DCE = pe.dce_rules[remat_p]
UPSTREAM_SWAP_TRANSPOSE = ad.fancy_transposes[state_primitives.swap_p]
UPSTREAM_CLOSED_CALL_CHECK = core.custom_typechecks[core.closed_call_p]
UPSTREAM_CALLBACK_PARTIAL_EVAL_CUSTOM = pe.partial_eval_jaxpr_custom_rules[
    debugging.debug_callback_p]
_REF_ACCESS = (state_primitives.get_p, state_primitives.swap_p,
               state_primitives.addupdate_p)
UPSTREAM_ADDUPDATE_JVP = ad.primitive_jvps[state_primitives.addupdate_p]
UPSTREAM_ACCESS_DISCHARGE = {p: state_discharge._discharge_rules[p]
                             for p in _REF_ACCESS}


def remat_dce(used_outputs, eqn):
  """jax 0.10.2's rule, except that a remat with effects (a debug callback)
  is kept when none of its outputs is used (0.10.2 drops it)."""
  used_inputs, new_eqn = UPSTREAM_DCE(used_outputs, eqn)
  if (new_eqn is None and not any(used_outputs)
      and ac._has_effects(eqn.params["jaxpr"].effects)):
    return [True] * len(eqn.invars), eqn
  return used_inputs, new_eqn


def swap_transpose(g, ref_acc, x, *idx, **params):
  """jax 0.10.x's swap transpose, except that a constant swapped-in value
  (not a `GradAccum`) takes no cotangent; the ref's cotangent is still
  swapped out (later JAX does the same)."""
  if ref_acc.ref is not None and not isinstance(x, ad.GradAccum):
    state_primitives.swap_p.bind(ref_acc.ref, ad_util.instantiate(g), *idx,
                                 **params)
    return
  UPSTREAM_SWAP_TRANSPOSE(g, ref_acc, x, *idx, **params)


def closed_call_typecheck(ctx, *in_atoms, call_jaxpr, **_):
  """jax 0.10.x's `closed_call` type check, ignoring the params (`name`) a
  retraced `closed_call` carries besides its jaxpr."""
  return UPSTREAM_CLOSED_CALL_CHECK(ctx, *in_atoms, call_jaxpr=call_jaxpr)


def callback_partial_eval_custom(saveable, unks_in, inst_in, eqn):
  """Upstream's rule for `debug_callback` in remat partial eval, except that
  a callback replayed in the rematerialization gets its known inputs that
  are not available there as residuals. (Upstream leaves them out when the
  policy saves such an input, e.g. by name: the staged jaxpr then refers
  to a var it never receives, a KeyError, also for pure functions.)"""
  known, staged, unks_out, inst_out, res = UPSTREAM_CALLBACK_PARTIAL_EVAL_CUSTOM(
      saveable, unks_in, inst_in, eqn)
  if staged is not None:
    have = set(res)
    res = [*res, *(v for v, inst in zip(eqn.invars, inst_in)
                   if not inst and not hasattr(v, "val") and v not in have)]
  return known, staged, unks_out, inst_out, res


def no_grad_discharge_rule(upstream):
  """`upstream`, a discharge rule of a ref access, whose values (the value
  read, the ref's new value) take no gradient when the ref's kind is
  ``"no_grad_no_remat"``."""
  def rule(first, *args, **params):
    new_invals, outs = upstream(first, *args, **params)
    ref_aval = _compat.discharge_rule_in_avals(first)[0]
    if getattr(ref_aval, "kind", None) == _compat.NO_GRAD_NO_REMAT:
      new_invals, outs = lax.stop_gradient((new_invals, outs))
    return new_invals, outs
  return rule


def addupdate_jvp(primals, tangents, **params):
  """JAX's `addupdate` JVP, except that an update of a ``"no_grad_no_remat"``
  ref is made (without a tangent) rather than dropped."""
  ref, x, *idx = primals
  if getattr(core.typeof(ref), "kind", None) == _compat.NO_GRAD_NO_REMAT:
    state_primitives.addupdate_p.bind(ref, x, *idx, **params)
    return [], []
  return UPSTREAM_ADDUPDATE_JVP(primals, tangents, **params)


def entries():
  """(owner, key, replacement): `owner[key]` for a rule table, else the
  attribute `key` of `owner`."""
  out = [(pe.partial_eval_jaxpr_custom_rules, debugging.debug_callback_p,
          callback_partial_eval_custom)]
  if not _compat.DCE_RULE_KEEPS_EFFECTS:
    out.append((pe.dce_rules, remat_p, remat_dce))
  if not _compat.SWAP_TRANSPOSE_CHECKS_CONSTANT:
    out.append((ad.fancy_transposes, state_primitives.swap_p, swap_transpose))
  if not _compat.CLOSED_CALL_CHECK_TAKES_PARAMS:
    out.append((core.custom_typechecks, core.closed_call_p,
                closed_call_typecheck))
  if _compat.NEW_REF_TAKES_KIND:
    out += [(state_discharge._discharge_rules, p, no_grad_discharge_rule(rule))
            for p, rule in UPSTREAM_ACCESS_DISCHARGE.items()]
  if _compat.ADDUPDATE_JVP_DROPS_NO_GRAD_UPDATE:
    out.append((ad.primitive_jvps, state_primitives.addupdate_p,
                addupdate_jvp))
  return out
