"""Fixes of JAX rules that remat with refs reaches (also in programs without
remat or without refs), as (owner, key, replacement) entries for `_install`.

* `debug_callback`'s partial-eval rule: a callback replayed in the remat gets
  the inputs that the policy saved (upstream: `KeyError` with names policies,
  pure code too).
* `remat_p`'s DCE rule, where it drops effectful remats whose outputs are
  unused (0.7.2 - 0.11.x): one that keeps them.
* the `swap` transpose, where it accumulates into a constant swapped-in value
  (0.7.2 - 0.10.x): one that does not.
* `closed_call`'s type check, where it rejects the `name` a retraced call
  carries (0.7.2 - 0.10.x, with `jax_enable_checks`): one that ignores it.
* the discharge rules of `get`, `swap` and `addupdate`: on a ref of kind
  ``"no_grad_no_remat"`` the values they produce take no gradient, which is
  what the same program gives before discharge (no tangent ever flows through
  such a ref). Value form discharges a remat body's refs before AD, so this
  keeps the kind's meaning under remat.
* `jit`'s abstract eval and type check, where they index its jaxpr's
  effects on inputs past the equation's inputs when the jaxpr has constvars
  (0.7.x: a remat around a jit that closes over an array lost the jit's ref
  writes): ones that shift them past the constvars, as 0.8 and later do.
* the JVP of `while`, where it fails on a cond jaxpr whose arg names are
  unknown (0.7.x - 0.9.x), as the cond jaxprs of JAX's state discharge are:
  one that gives such a cond jaxpr empty names first.
* the JVP of `addupdate`, where it drops the update of a
  ``"no_grad_no_remat"`` ref altogether (0.10.x - 0.12.x: under `grad`,
  `jax.ref.addupdate` into such a ref is lost, also without remat), or
  raises a TypeError for an update that carries no tangent into a ref that
  has none (where `r[...] += v` works): one that makes such updates without a
  tangent.
* `AbstractRef`'s equality and hash, where they ignore the ref's kind
  (0.10.x - 0.12.x): tracing caches keyed on avals then hand a function
  traced for a ``"no_grad_no_remat"`` ref to a call with a default-kind
  ref, or the reverse (a silent wrong gradient); ones that compare it.
"""
from __future__ import annotations

from jax._src import ad_checkpoint as ac
from jax._src import ad_util
from jax._src import core
from jax._src import custom_derivatives
from jax._src import debugging
from jax._src import effects
from jax._src import pjit
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.lax import lax
from jax._src.lax.control_flow import loops
from jax._src.state import discharge as state_discharge
from jax._src.state import primitives as state_primitives
from jax._src.state.types import AbstractRef

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
UPSTREAM_JIT_ABSTRACT_EVAL = pjit.jit_p.abstract_eval
UPSTREAM_JIT_TYPECHECK = core.custom_typechecks[pjit.jit_p]
UPSTREAM_WHILE_JVP = ad.primitive_jvps[loops.while_p]
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
  ref, or one where neither the ref nor the value has a tangent, is made
  without a tangent (rather than dropped, or a TypeError)."""
  ref, x, *idx = primals
  ref_dot, x_dot, *_ = tangents
  no_tangent = (type(ref_dot) is ad_util.Zero and
                type(x_dot) is ad_util.Zero)
  if (no_tangent or
      getattr(core.typeof(ref), "kind", None) == _compat.NO_GRAD_NO_REMAT):
    state_primitives.addupdate_p.bind(ref, x, *idx, **params)
    return [], []
  return UPSTREAM_ADDUPDATE_JVP(primals, tangents, **params)


def _past_constvars(effs, jaxpr: core.Jaxpr):
  """A jaxpr's effects, those on inputs indexed into the inputs of an
  equation that calls it: past the jaxpr's constvars, which it does not take."""
  n = len(jaxpr.constvars)
  return {e.replace(input_index=e.input_index - n)
          if n and isinstance(e, effects.JaxprInputEffect) else e for e in effs}


def jit_abstract_eval(*args, jaxpr, **params):
  """jax 0.7.x's `jit` abstract eval, with the effects on inputs indexed into
  the equation's inputs."""
  out_avals, effs = UPSTREAM_JIT_ABSTRACT_EVAL(*args, jaxpr=jaxpr, **params)
  return out_avals, _past_constvars(effs, jaxpr.jaxpr)


def jit_typecheck(ctx_factory, *in_atoms, jaxpr, **params):
  """jax 0.7.x's `jit` type check, with the effects on inputs indexed into
  the equation's inputs."""
  out_type, effs = UPSTREAM_JIT_TYPECHECK(ctx_factory, *in_atoms, jaxpr=jaxpr,
                                          **params)
  return out_type, _past_constvars(effs, jaxpr.jaxpr)


def while_jvp(primals, tangents, *, cond_jaxpr, **params):
  """JAX's `while` JVP, on a cond jaxpr whose unknown arg names (JAX's state
  discharge makes such jaxprs) are replaced by empty ones, which it can
  extend."""
  dbg = cond_jaxpr.jaxpr.debug_info
  if dbg is not None and dbg.arg_names is None:
    names = ("",) * len(cond_jaxpr.jaxpr.invars)
    cond_jaxpr = cond_jaxpr.replace(jaxpr=cond_jaxpr.jaxpr.replace(
        debug_info=dbg._replace(arg_names=names)))
  return UPSTREAM_WHILE_JVP(primals, tangents, cond_jaxpr=cond_jaxpr, **params)


def ref_aval_eq(self, other):
  """`AbstractRef.__eq__` that also compares the kind."""
  return (type(self) is type(other) and self.inner_aval == other.inner_aval
          and self.memory_space == other.memory_space
          and self.kind == other.kind)


def ref_aval_hash(self):
  return hash((type(self), self.inner_aval, self.memory_space, self.kind))


def custom_jvp_call_discharge(first, *rest, call_jaxpr, **params):
  """Discharge of a `custom_jvp` call that takes no refs: the same call, on
  its jaxpr with the refs it makes inside discharged, so that it keeps its
  JVP rule. (One that takes refs has no value form that keeps the rule.)"""
  in_avals, args = _compat.discharge_rule_operands(first, rest)
  if any(isinstance(a, AbstractRef) for a in in_avals):
    raise NotImplementedError(
        "No state discharge rule for a custom_jvp function that takes refs.")
  pure = _compat.discharge_closed(call_jaxpr, [False] * len(in_avals))
  outs = _compat.bind_eqn_params(custom_derivatives.custom_jvp_call_p, args,
                                 dict(params, call_jaxpr=pure))
  return [None] * len(in_avals), outs


def entries():
  """(owner, key, replacement): `owner[key]` for a rule table, else the
  attribute `key` of `owner`."""
  out = [(pe.partial_eval_jaxpr_custom_rules, debugging.debug_callback_p,
          callback_partial_eval_custom)]
  if not _compat.DCE_RULE_KEEPS_EFFECTS:
    out.append((pe.dce_rules, remat_p, remat_dce))
  if _compat.REF_AVAL_EQ_IGNORES_KIND:
    out += [(AbstractRef, "__eq__", ref_aval_eq),
            (AbstractRef, "__hash__", ref_aval_hash)]
  if not _compat.SWAP_TRANSPOSE_CHECKS_CONSTANT:
    out.append((ad.fancy_transposes, state_primitives.swap_p, swap_transpose))
  if not _compat.CLOSED_CALL_CHECK_TAKES_PARAMS:
    out.append((core.custom_typechecks, core.closed_call_p,
                closed_call_typecheck))
  if _compat.NEW_REF_TAKES_KIND:
    out += [(state_discharge._discharge_rules, p, no_grad_discharge_rule(rule))
            for p, rule in UPSTREAM_ACCESS_DISCHARGE.items()]
  if _compat.JIT_EFFECTS_COUNT_CONSTVARS:
    out += [(pjit.jit_p, "abstract_eval", jit_abstract_eval),
            (core.custom_typechecks, pjit.jit_p, jit_typecheck)]
  if _compat.WHILE_JVP_NEEDS_ARG_NAMES:
    out.append((ad.primitive_jvps, loops.while_p, while_jvp))
  if (_compat.ADDUPDATE_JVP_DROPS_NO_GRAD_UPDATE or
      _compat.ADDUPDATE_JVP_FAILS_WITHOUT_TANGENTS):
    out.append((ad.primitive_jvps, state_primitives.addupdate_p,
                addupdate_jvp))
  if _compat.CUSTOM_JVP_DISCHARGE_MISSING:
    out.append((state_discharge._discharge_rules,
                custom_derivatives.custom_jvp_call_p,
                custom_jvp_call_discharge))
  return out
