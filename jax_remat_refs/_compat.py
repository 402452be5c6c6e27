"""Every difference between the JAX versions we support, in one place.

The rest of the package imports JAX internals only through this module or
through modules whose API is identical on every supported version.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

import jax
from jax._src import ad_checkpoint as ac
from jax._src import config
from jax._src import core
from jax._src import custom_derivatives
from jax._src import effects
from jax._src import pjit
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.lax.control_flow import loops
from jax._src.state import primitives as state_primitives
from jax._src.state import discharge as state_discharge
from jax._src.state import types as state_types

# The releases the test suite runs on (CI: the newest of each minor line in
# full, the others with a quick subset). Older ones are refused at import;
# newer ones import with a warning.
OLDEST_SUPPORTED = "0.7.2"
NEWEST_TESTED = "0.12.0.1"

JAX_VERSION = jax.__version__
# `remat_p`'s own bind (JAX replaces the primitive's bind with a function that
# checks `prevent_cse`; the package replaces it in turn).
UPSTREAM_REMAT_BIND = getattr(ac, "_remat_bind", ac.remat_p.bind)
# 0.12 made `core.Jaxpr` carry its own consts (no ClosedJaxpr in most APIs).
JAXPR_IS_CLOSED = hasattr(core.Jaxpr, "consts")
# A JAX patched with this project's upstream series (build/make_patch.py)
# binds ref-touching remats in value form itself, and (with its last patch)
# takes `ref_effects=` in `jax.checkpoint`.
JAX_HAS_VALUE_FORM = hasattr(ac, "_remat_bind_value_form")
CHECKPOINT_TAKES_REF_EFFECTS = "ref_effects" in inspect.signature(
    ac.checkpoint).parameters
JAX_HAS_REF_EFFECTS_OPTION = hasattr(config, "remat_ref_effects")
# Whether upstream's remat takes a body with ref effects through partial
# eval (differentiation). JAX 0.7.x and 0.8.0 refuse it (NotImplementedError:
# "Effects not supported in partial-eval of `checkpoint`/`remat`"): a
# value-form remat never reaches that check, but a "replay" remat, which is
# upstream's remat, does.
REMAT_ALLOWS_REF_EFFECTS = effects.remat_allowed_effects.contains(
    state_types.ReadEffect(0))
# A `remat_p` DCE rule that takes `live_ins` is the one that keeps effectful
# remats whose outputs are unused; the older form (0.7.2 - 0.11.x) drops a
# remat whose only effect is, say, a debug callback.
DCE_RULE_KEEPS_EFFECTS = "live_ins" in inspect.signature(
    pe.dce_rules[ac.remat_p]).parameters
# The `swap` transpose rule of 0.7.2 - 0.10.x accumulates a cotangent into
# the value swapped in even when that value is a constant (not a
# `GradAccum`); the fixed rule checks for it.
SWAP_TRANSPOSE_CHECKS_CONSTANT = "GradAccum" in inspect.getsource(
    ad.fancy_transposes[state_primitives.swap_p])

# The type check of `closed_call` in 0.7.2 - 0.10.x takes only `call_jaxpr`,
# while a `closed_call` retraced through its bind (e.g. under vmap) carries a
# `name` too: `jax_enable_checks` then fails on a remat around a scan, also
# without refs.
CLOSED_CALL_CHECK_TAKES_PARAMS = any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(
        core.custom_typechecks[core.closed_call_p]).parameters.values())


def _release(version: str) -> tuple[int, ...]:
  """(0, 12, 0, 1) for '0.12.0.1' (or '0.12.0.1.dev2026...')."""
  parts = []
  for p in version.split("."):
    if not p.isdigit():
      break
    parts.append(int(p))
  return tuple(parts)


def check_jax_version() -> None:
  release = _release(JAX_VERSION)
  if release < _release(OLDEST_SUPPORTED):
    raise ImportError(
        f"jax_remat_refs supports jax {OLDEST_SUPPORTED} and newer; the "
        f"installed jax is {JAX_VERSION}. Upgrade jax (pip install "
        f"'jax>={OLDEST_SUPPORTED}').")
  if release > _release(NEWEST_TESTED):
    warnings.warn(
        f"jax_remat_refs was tested with jax {OLDEST_SUPPORTED} to "
        f"{NEWEST_TESTED}; the installed jax is {JAX_VERSION}, newer than "
        "that. It patches JAX's remat internals: run your program once "
        "without jax.remat and compare.", UntestedJaxWarning, stacklevel=3)


class UntestedJaxWarning(UserWarning):
  """The installed JAX is newer than the newest release tested."""


def close(jaxpr: core.Jaxpr):
  """A consts-free jaxpr in the form JAX APIs taking 'a closed jaxpr' want."""
  assert not jaxpr.constvars
  return jaxpr if JAXPR_IS_CLOSED else core.ClosedJaxpr(jaxpr, [])


def open_closed(closed) -> tuple[core.Jaxpr, list[Any]]:
  """Inverse of `close`: (jaxpr with constvars, consts). An open jaxpr is
  returned as it is."""
  if JAXPR_IS_CLOSED or isinstance(closed, core.Jaxpr):
    return closed, list(getattr(closed, "consts", ()))
  return closed.jaxpr, list(closed.consts)


# 0.10.2 and later: `discharge_state(closed_jaxpr, should_discharge=...)`
# returns a closed jaxpr; before: `discharge_state(jaxpr, consts, ...)`
# returns (jaxpr, consts).
_DISCHARGE_TAKES_CONSTS = "consts" in inspect.signature(
    state_discharge.discharge_state).parameters


# 0.11 and later tag the values of a discharged ref with the ref's memory
# space unless asked not to; JAX's AD then rejects their cotangents (a Host
# ref's value read in a remat: "Expected cotangent type float32<host>[]").
_DISCHARGE_STRIPS_MEMORY_SPACE = "strip_memory_space" in inspect.signature(
    state_discharge.discharge_state).parameters


def discharge_closed(closed, should_discharge):
  """Discharge the refs selected by `should_discharge` (one per input) of a
  closed jaxpr (of the type `pe.partial_eval_jaxpr_nounits` returns); the
  values are plain arrays, whatever the refs' memory spaces."""
  should_discharge = list(should_discharge)
  if _DISCHARGE_STRIPS_MEMORY_SPACE:
    return state_discharge.discharge_state(
        closed, should_discharge=should_discharge, strip_memory_space=True)
  if not _DISCHARGE_TAKES_CONSTS:
    return state_discharge.discharge_state(closed,
                                           should_discharge=should_discharge)
  jaxpr, consts = open_closed(closed)
  jaxpr, consts = state_discharge.discharge_state(
      jaxpr, consts, should_discharge=should_discharge)
  return core.ClosedJaxpr(jaxpr, consts)


def discharge_state(jaxpr: core.Jaxpr, should_discharge) -> tuple[core.Jaxpr, list]:
  """Discharge the refs selected by `should_discharge` (one per invar) of a
  consts-free jaxpr: (jaxpr with constvars, consts)."""
  return open_closed(discharge_closed(close(jaxpr), should_discharge))


# A `JaxprInputEffect` names the var it is about (`input`, 0.10.2 and later)
# or its position (`input_index`: in `eqn.invars` for an equation's effects,
# in `constvars + invars` for a jaxpr's).
_EFFECT_HAS_VAR = "input_index" not in inspect.signature(
    effects.JaxprInputEffect.__init__).parameters
# The effects of a `jit` equation whose jaxpr has constvars (arrays the
# jitted function closes over): 0.7.x gives the equation its jaxpr's effects
# as they are, indexed into the jaxpr's constvars + invars, although the
# equation's inputs are the invars alone. Such a jit then names the wrong
# input as the ref it reads or writes (a remat around it lost the write), or
# an invalid one (ValueError "`JaxprInputEffect` ... is invalid", also without
# remat). 0.8 and later shift them past the constvars.
_JIT_ABSTRACT_EVAL = getattr(pjit, "_pjit_abstract_eval", None)
JIT_EFFECTS_COUNT_CONSTVARS = (
    not _EFFECT_HAS_VAR and _JIT_ABSTRACT_EVAL is not None and
    inspect.getsource(_JIT_ABSTRACT_EVAL).rstrip().endswith(
        "return jaxpr.out_avals, jaxpr.effects"))
# The JVP of `while` extends its cond jaxpr's arg names without checking
# that they are known (0.7.x - 0.9.x): a cond jaxpr made by JAX's state
# discharge (names unknown: `arg_names=None`) makes it raise "TypeError:
# unsupported operand type(s) for +: 'NoneType' and 'tuple'". Value form
# discharges a remat body before AD, so a ref-touching while loop that
# carries a tangent reaches it. 0.10 and later check.
_WHILE_JVP_SRC = inspect.getsource(ad.primitive_jvps[loops.while_p])
WHILE_JVP_NEEDS_ARG_NAMES = (
    "cond_debug.arg_names +" in _WHILE_JVP_SRC and
    "arg_names is not None" not in _WHILE_JVP_SRC)


# A discharge rule's first argument: `in_avals` (0.10.x), or a context that
# carries them (`ctx.in_avals`, 0.11 and later).
def discharge_rule_in_avals(first_arg):
  return getattr(first_arg, "in_avals", first_arg)


# `custom_jvp_call` has no state discharge rule (every release to 0.12.0.1):
# a custom_jvp function that makes a ref inside cannot be compiled.
CUSTOM_JVP_DISCHARGE_MISSING = (custom_derivatives.custom_jvp_call_p
                                not in state_discharge._discharge_rules)


def bind_eqn_params(prim, args, params):
  """`prim.bind(*args)` with an equation's params, as `core.eval_jaxpr` binds
  them: `get_bind_params` gives (subfuns, params) up to 0.9.x, later params
  that carry the subfuns."""
  bind_params = prim.get_bind_params(params)
  if isinstance(bind_params, tuple):
    subfuns, bind_params = bind_params
    return prim.bind(*subfuns, *args, **bind_params)
  return prim.bind(*args, **bind_params)


def discharge_rule_operands(first_arg, rest):
  """A discharge rule's (in_avals, operands), from its arguments: `(in_avals,
  out_avals, *operands)` (0.10.x) or `(ctx, *operands)` (0.11 and later)."""
  in_avals = discharge_rule_in_avals(first_arg)
  return in_avals, rest if in_avals is not first_arg else rest[1:]


# `jax.new_ref(x, kind=...)`: a ref's kind, the owner's declaration of what AD
# and remat do with it (JAX 0.10 and later have "no_grad_no_remat"). The
# public `jax.new_ref` is probed: 0.8.1 - 0.9.x take a kind only in the
# internal `core.new_ref` (0.7.2, 0.8.0: no kinds at all) and give
# "no_grad_no_remat" no meaning (0.9.x has the same rules under an internal
# name).
NO_GRAD_NO_REMAT = "no_grad_no_remat"
# `AbstractRef.__eq__` / `__hash__` that leave the kind out.
REF_AVAL_EQ_IGNORES_KIND = (
    "kind" in inspect.signature(state_types.AbstractRef.__init__).parameters
    and "kind" not in inspect.getsource(state_types.AbstractRef.__eq__))
# `jax.ref.freeze` (a ref's last value; the ref is consumed).
FREEZE_P = getattr(core, "freeze_p", None)
NEW_REF_TAKES_KIND = "kind" in inspect.signature(jax.new_ref).parameters
# The JVP rule of `addupdate` that makes the primal update only for refs of
# the default kind: an update of a "no_grad_no_remat" ref is lost under AD.
_ADDUPDATE_JVP_SRC = inspect.getsource(
    ad.primitive_jvps[state_primitives.addupdate_p])
# ... and that, for an update whose ref and value both carry no tangent,
# binds `addupdate` on the ref's symbolic-zero tangent (a TypeError inside
# JAX where `r[...] += v` works).
ADDUPDATE_JVP_FAILS_WITHOUT_TANGENTS = "Zero" not in _ADDUPDATE_JVP_SRC
ADDUPDATE_JVP_DROPS_NO_GRAD_UPDATE = (
    NEW_REF_TAKES_KIND and
    '!= "no_grad_no_remat"' in _ADDUPDATE_JVP_SRC and
    _ADDUPDATE_JVP_SRC.count("addupdate_p.bind(ref_primal") == 1)


# A config state is made part of the trace context (the key of JAX's tracing
# caches) by `include_in_trace_context=True` (0.8 and later); before, the
# context is a fixed tuple that `register_trace_context_callback` extends.
_STATE_TAKES_TRACE_CONTEXT = "include_in_trace_context" in inspect.signature(
    config.enum_state).parameters


def enum_state_in_trace_context(**kwargs):
  """`config.enum_state(**kwargs)`, its value part of the jit key and of the
  trace context."""
  if _STATE_TAKES_TRACE_CONTEXT:
    return config.enum_state(**kwargs, include_in_jit_key=True,
                             include_in_trace_context=True)
  state = config.enum_state(**kwargs, include_in_jit_key=True)
  config.register_trace_context_callback.append(lambda: state.value)
  return state


def effect_var(effect, binders):
  """The var among `binders` (an equation's invars, or a jaxpr's constvars
  and invars) that a `JaxprInputEffect` is about."""
  return effect.input if _EFFECT_HAS_VAR else binders[effect.input_index]
