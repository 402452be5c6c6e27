"""Control flow with ref effects inside a remat body.

JAX's partial-eval rule for `cond` rejects branches with ref effects
("State effect not supported in cond partial-eval"). Inside a remat body we
rewrite such a `cond` (at any depth: also inside loop bodies) into value form
before partial evaluation: read the refs
it touches, run the discharged `cond` (refs in as values, new contents out),
and write back the refs it writes. The program means the same thing, and
both the forward and the rematerializing pass can be split as pure code.

Two more rewrites keep loops inside a remat body splittable: refs a loop
body makes itself are discharged there, also where the body hands them to a
nested remat or jit, which then takes their values (partial eval would
otherwise pass them between the halves of the body, or hoist them out of
the loop), and on jax 0.10.2 a loop that writes
refs is put into value form like `cond` (0.10.2 loses such writes when the
remat or the loop sits in another loop).
"""
from __future__ import annotations

from jax._src import core
from jax._src.ad_checkpoint import remat_p
from jax._src.pjit import jit_p
from jax._src.sharding_impls import UNSPECIFIED
from jax._src.lax.control_flow.conditionals import cond_p
from jax._src.lax.control_flow.loops import scan_p, while_p
from jax._src.state.types import AbstractRef, RefEffect
from jax._src.util import weakref_lru_cache

from jax_remat_refs import _compat
from jax_remat_refs import _rewrite

# Primitives whose partial-eval rules reject ref effects; discharged here.
_DISCHARGED_PRIMITIVES = (cond_p,)
# Loops whose partial-eval rules would pass refs made in the body from one
# half of the body to the other ("returned a mutable array reference"): refs
# made in their bodies are discharged (they are local, so nothing changes).
_LOOPS = (scan_p, while_p)
# Equations that call a body on their inputs: a ref made by the enclosing
# body and handed to one of them is passed by value (`_calls_take_values`).
_CALLS = (remat_p, jit_p)


def _needs_discharge(eqn: core.JaxprEqn) -> bool:
  if not _rewrite.ref_effect_inputs(eqn.effects):
    return False
  if eqn.primitive in _DISCHARGED_PRIMITIVES:
    return True
  return (_compat.NESTED_LOOP_PE_LOSES_WRITES and eqn.primitive in _LOOPS
          and bool(_rewrite.ref_effect_inputs(eqn.effects, _rewrite.WRITE_KINDS)))


@weakref_lru_cache
def discharge_unsupported(jaxpr: core.Jaxpr) -> core.Jaxpr:
  """`jaxpr` with every ref-effectful `cond` (and on 0.10.2 every ref-writing
  loop) put into value form, also inside the bodies of loops and other
  equations with jaxpr parameters."""
  eqns: list[core.JaxprEqn] = []
  changed = False
  for eqn in jaxpr.eqns:
    if _needs_discharge(eqn):
      eqns.extend(_discharge_eqn(eqn))
      changed = True
      continue
    new = _discharge_in_params(eqn)
    changed |= new is not eqn
    eqns.append(new)
  if not changed:
    return jaxpr
  return _rewrite._finish(jaxpr, jaxpr.invars, jaxpr.outvars, eqns)


def _discharge_in_params(eqn: core.JaxprEqn) -> core.JaxprEqn:
  """`eqn` with `discharge_unsupported` applied to its jaxpr parameters (the
  bodies of scan/while/jit/remat); loop bodies also lose the refs they make.
  The rewrite keeps each body's inputs and outputs."""
  if not any(isinstance(e, (RefEffect, core.InternalMutableArrayEffect))
             for e in eqn.effects):
    return eqn
  fix = discharge_unsupported
  if eqn.primitive in _LOOPS:
    fix = lambda j: _discharge_own_refs(discharge_unsupported(j), False)
  return _map_jaxpr_params(eqn, fix)


def _map_jaxpr_params(eqn: core.JaxprEqn, fix) -> core.JaxprEqn:
  """`eqn` with `fix` (jaxpr -> jaxpr, same inputs and outputs) applied to
  each of its jaxpr parameters; an internal-refs effect that no body has
  any more is dropped from the equation's effects."""
  params, inner_effects = {}, set()
  for name, val in eqn.params.items():
    if isinstance(val, core.Jaxpr):
      new = fix(val)
      inner_effects |= set(new.effects)
    elif hasattr(core, "ClosedJaxpr") and isinstance(val, core.ClosedJaxpr):
      new_inner = fix(val.jaxpr)
      new = val if new_inner is val.jaxpr else val.replace(jaxpr=new_inner)
      inner_effects |= set(new_inner.effects)
    else:
      continue
    if new is not val:
      params[name] = new
  if not params:
    return eqn
  internal = core.InternalMutableArrayEffect
  effects = {e for e in eqn.effects if not isinstance(e, internal)}
  effects |= {e for e in inner_effects if isinstance(e, internal)}
  return eqn.replace(params={**eqn.params, **params}, effects=effects)


def discharge_local_refs(jaxpr: core.Jaxpr) -> core.Jaxpr:
  """`jaxpr` with the refs it makes itself (`new_ref`) turned into values; its
  input refs stay refs, so inputs, outputs and outer effects are unchanged.
  `jaxpr` itself where that cannot be done."""
  if not any(e.primitive is core.ref_p for e in jaxpr.eqns):
    return jaxpr
  return _discharge_local(jaxpr)


@weakref_lru_cache
def _discharge_local(jaxpr: core.Jaxpr) -> core.Jaxpr:
  calls_done = _calls_without_own_refs(jaxpr)
  if calls_done is None:
    return jaxpr
  out, consts = _compat.discharge_state(calls_done,
                                        [False] * len(jaxpr.invars))
  if consts or out.constvars:
    return jaxpr
  return out


def _refs_made_in(jaxpr: core.Jaxpr) -> set:
  return {e.outvars[0] for e in jaxpr.eqns if e.primitive is core.ref_p}


def _calls_without_own_refs(jaxpr: core.Jaxpr) -> core.Jaxpr | None:
  """`jaxpr` with the refs made inside its remat and jit equations that also
  take refs from outside `jaxpr` discharged there (JAX's discharge rules for
  remat and jit would discharge those outside refs too, "Did not ask for
  inval to be discharged"); None where one of them cannot be."""
  made = _refs_made_in(jaxpr)
  eqns = []
  for eqn in jaxpr.eqns:
    if (eqn.primitive in _CALLS
        and core.internal_mutable_array_effect in eqn.effects
        and any(_rewrite.is_ref(v) and v not in made for v in eqn.invars)):
      body = _discharge_local(_call_body(eqn))
      if core.internal_mutable_array_effect in body.effects:
        return None
      eqn = _with_call_body(eqn, body, eqn.invars, eqn.outvars)
    eqns.append(eqn)
  if all(a is b for a, b in zip(eqns, jaxpr.eqns)):
    return jaxpr
  return _rewrite._finish(jaxpr, jaxpr.invars, jaxpr.outvars, eqns)


@weakref_lru_cache
def discharge_written_local_refs(jaxpr: core.Jaxpr) -> core.Jaxpr:
  """`jaxpr` with the refs it makes and writes turned into values, at any
  depth (also inside `jit`s and loops in it), where a body only reads and
  writes such refs directly or hands them to a remat or `jit`.

  JAX's partial evaluation rejects writing a differentiated value into a ref
  made from a value without one ("Mutating a reference with unknown/
  differentiated values is not supported"; a KeyError on 0.10.2), which
  the program without remat runs. Such refs are local to their body, so
  their values can be threaded instead, which partial evaluation splits."""
  eqns = [_map_jaxpr_params(e, discharge_written_local_refs)
          if any(isinstance(x, core.InternalMutableArrayEffect)
                 for x in e.effects) else e
          for e in jaxpr.eqns]
  if any(a is not b for a, b in zip(eqns, jaxpr.eqns)):
    jaxpr = _rewrite._finish(jaxpr, jaxpr.invars, jaxpr.outvars, eqns)
  return _discharge_own_refs(jaxpr, True)


def _discharge_own_refs(jaxpr: core.Jaxpr, only_if_written: bool
                        ) -> core.Jaxpr:
  """`jaxpr` with the refs it makes turned into values, if it only reads and
  writes them directly or hands them to a remat or jit (which then takes
  their values, see `_calls_take_values`), and, with `only_if_written`,
  writes or hands on one; else `jaxpr` (a ref handed to another equation is
  left to JAX)."""
  made = _refs_made_in(jaxpr)
  if not made:
    return jaxpr
  orig = jaxpr
  written, to_calls = set(), False
  for eqn in jaxpr.eqns:
    used = [v for v in eqn.invars if isinstance(v, core.Var) and v in made]
    if not used:
      continue
    if eqn.primitive in _CALLS and len(set(used)) == len(used):
      written.update(used)  # the call takes them by value, see below
      to_calls = True
      continue
    if (eqn.primitive not in _rewrite.ACCESS_PRIMITIVES
        or eqn.invars[0] not in made or len(used) > 1):
      return jaxpr  # handed on: leave it to JAX
    if eqn.primitive is not _rewrite.get_p:
      written.add(eqn.invars[0])
  if any(isinstance(v, core.Var) and v in made for v in jaxpr.outvars):
    return jaxpr
  if only_if_written and not written:
    return jaxpr
  if to_calls:
    jaxpr = _calls_take_values(jaxpr, made)
    if jaxpr is None:
      return orig
  return discharge_local_refs(jaxpr)


def _calls_take_values(jaxpr: core.Jaxpr, made: set) -> core.Jaxpr | None:
  """`jaxpr` with each remat or jit equation that takes refs in `made`
  rewritten to take their contents instead and return their new contents
  (its body makes the refs from them and is discharged in them), read before
  it and written back after it. The refs are private to `jaxpr`, so nothing
  else sees them meanwhile. None where a body cannot be discharged."""
  eqns: list[core.JaxprEqn] = []
  for eqn in jaxpr.eqns:
    pos = [i for i, v in enumerate(eqn.invars)
           if eqn.primitive in _CALLS and isinstance(v, core.Var)
           and v in made]
    if not pos:
      eqns.append(eqn)
      continue
    body = _call_body(eqn)
    ins, body_ins, news, finals = list(eqn.invars), list(body.invars), [], []
    for i in pos:
      ref, inner = eqn.invars[i], body.invars[i]
      val, body_val = core.Var(ref.aval.inner_aval), core.Var(ref.aval.inner_aval)
      eqns.append(_rewrite._read_whole_eqn(ref, val))
      ins[i], body_ins[i] = val, body_val
      news.append(_rewrite._new_ref_eqn(body_val, inner))
      finals.append((ref, inner, core.Var(ref.aval.inner_aval),
                     core.Var(ref.aval.inner_aval)))
    reads = [_rewrite._read_whole_eqn(inner, f) for _, inner, f, _ in finals]
    body = _discharge_own_refs(_rewrite._finish(
        body, body_ins, list(body.outvars) + [f for _, _, f, _ in finals],
        news + list(body.eqns) + reads), False)
    if core.internal_mutable_array_effect in body.effects:
      return None  # the body hands them on in turn
    outs = list(eqn.outvars) + [new for _, _, _, new in finals]
    eqns.append(_with_call_body(eqn, body, ins, outs))
    eqns.extend(_rewrite._write_whole_eqn(ref, new)
                for ref, _, _, new in finals)
  return _rewrite._finish(jaxpr, jaxpr.invars, jaxpr.outvars, eqns)


def _call_body(eqn: core.JaxprEqn) -> core.Jaxpr:
  param = eqn.params["jaxpr"]
  return param if isinstance(param, core.Jaxpr) else param.jaxpr


def _with_call_body(eqn: core.JaxprEqn, body: core.Jaxpr, invars, outvars
                    ) -> core.JaxprEqn:
  """The remat or jit `eqn` calling `body` on `invars`; outputs `body` has
  beyond the equation's own come last."""
  param = eqn.params["jaxpr"]
  params = dict(eqn.params, jaxpr=body if isinstance(param, core.Jaxpr)
                else param.replace(jaxpr=body))
  extra = len(outvars) - len(eqn.outvars)
  if eqn.primitive is jit_p and extra:
    params.update(out_shardings=params["out_shardings"] + (UNSPECIFIED,) * extra,
                  out_layouts=params["out_layouts"] + (None,) * extra)
  return eqn.replace(invars=list(invars), outvars=list(outvars), params=params,
                     effects=core.eqn_effects(body, invars))


def _discharge_eqn(eqn: core.JaxprEqn) -> list[core.JaxprEqn]:
  # A one-equation jaxpr, discharged in all its ref inputs.
  ins = list(dict.fromkeys(v for v in eqn.invars if isinstance(v, core.Var)))
  is_ref = [isinstance(v.aval, AbstractRef) for v in ins]
  single = core.Jaxpr([], ins, list(eqn.outvars), [eqn],
                      _rewrite.pe.make_jaxpr_effects([], ins, eqn.outvars, [eqn]))
  discharged, consts = _compat.discharge_state(single, is_ref)
  assert not consts and not discharged.constvars
  written = _rewrite.ref_effect_inputs(eqn.effects, _rewrite.WRITE_KINDS)

  out: list[core.JaxprEqn] = []
  env: dict = {}
  for v, d_in, r in zip(ins, discharged.invars, is_ref):
    if r:
      val = core.Var(v.aval.inner_aval)
      out.append(_rewrite._read_whole_eqn(v, val))
      env[d_in] = val
    else:
      env[d_in] = v
  n_outs = len(eqn.outvars)
  for v, d_out in zip(eqn.outvars, discharged.outvars[:n_outs]):
    if not isinstance(d_out, core.Var) or d_out in env:
      # The discharged cond always produces its outputs itself.
      raise NotImplementedError("remat: cond output forwarded from an input")
    env[d_out] = v
  finals = discharged.outvars[n_outs:]
  final_vars = {}
  for ref, d_fin in zip([v for v, r in zip(ins, is_ref) if r], finals):
    if ref in written:
      final_vars[ref] = env.get(d_fin, d_fin)
  for d_eqn in discharged.eqns:
    out.append(d_eqn.replace(
        invars=[env.get(x, x) if isinstance(x, core.Var) else x
                for x in d_eqn.invars],
        outvars=[env.get(x, x) for x in d_eqn.outvars]))
  for ref, val in final_vars.items():
    out.append(_rewrite._write_whole_eqn(ref, val))
  return out
