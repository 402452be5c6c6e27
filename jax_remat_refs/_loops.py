"""Reads of refs a loop never writes are loop-invariant.

When `scan` is partially evaluated, residuals of its known body that depend
only on its consts are hoisted out of the loop instead of being stacked per
iteration (`loops._scan_known_hoisting`). Upstream treats every ref const as
unknown there, so a remat in a scan body that reads a stacked weight ref
(in value form: the ref's value at remat entry) saves the whole ref once per
iteration, O(L^2) memory for L layers.

A ref that the known body never writes holds the same value in every
iteration. `scan_known_hoisting` discharges such refs in the known body (a
body with effects on a ref equals the pure body on the ref's value), when
the body reads them itself (a value-form remat's entry reads, `w_ref[i]`),
and passes their values, read once before the loop, as ordinary consts; then
upstream's hoisting treats them as it treats array consts: residuals that
depend only on them (the value itself, a slice at a const index) are
hoisted, and weights in a ref cost what weights in an array cost.
"""
from __future__ import annotations

from jax._src import core
from jax._src.interpreters import partial_eval as pe
from jax._src.lax.control_flow import loops
from jax._src.state import primitives as state_primitives

from jax_remat_refs import _compat
from jax_remat_refs import _jaxpr_util as ju

UPSTREAM_HOISTING = loops._scan_known_hoisting


def scan_known_hoisting(jaxpr_known, known_consts, *num_res):
  jaxpr_known, known_consts = discharge_invariant_refs(jaxpr_known, known_consts)
  return UPSTREAM_HOISTING(jaxpr_known, known_consts, *num_res)


def discharge_invariant_refs(jaxpr_known, known_consts):
  """(body, consts) with the ref consts that the known body never writes and
  only reads directly replaced by their values, read here, once."""
  body, _ = _compat.open_closed(jaxpr_known)
  written = ju.written_ref_inputs(body)
  # Only refs the body reads directly: a ref it hands to a nested call (jit,
  # a loop) is left alone, as JAX discharges some of those calls' refs all
  # together, not one by one.
  read_only_directly = _read_only_directly(body)
  n = len(known_consts)  # the body's first inputs
  invariant = [ju.is_ref(c) and not w and v in read_only_directly
               for c, w, v in zip(known_consts, written[:n], body.invars[:n])]
  if not any(invariant):
    return jaxpr_known, known_consts
  should = invariant + [False] * (len(body.invars) - n)
  try:
    discharged = _compat.discharge_closed(jaxpr_known, should)
  except (ValueError, NotImplementedError):
    # Some of JAX's discharge rules take all of an equation's refs or none
    # (jit's, in 0.10.x, also for refs the equation shares through aliases
    # of one aval): where the partial discharge is refused, the loop is
    # partially evaluated as upstream does it. The refused discharge only
    # traced a new jaxpr; nothing outside it was bound.
    return jaxpr_known, known_consts
  # Drop the discharged refs' final values (their initial values).
  n_out = len(jaxpr_known.out_avals)
  discharged = pe.prune_closed_jaxpr_outputs(
      discharged, [True] * n_out + [False] * (len(discharged.out_avals) - n_out))
  consts = [state_primitives.ref_get(c, ()) if inv else c
            for c, inv in zip(known_consts, invariant)]
  return discharged, consts


def _read_only_directly(body) -> set:
  """The ref inputs of `body` that only its own `get` equations use."""
  refs = {v for v in body.invars if ju.is_ref(v)}
  for eqn in body.eqns:
    if eqn.primitive is not state_primitives.get_p:
      refs.difference_update(v for v in eqn.invars if isinstance(v, core.Var))
  return refs
