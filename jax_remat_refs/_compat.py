"""Every difference between the JAX versions we support, in one place.

The rest of the package imports JAX internals only through this module or
through modules whose API is identical on every supported version.
"""
from __future__ import annotations

import os
from typing import Any

import jax
from jax._src import config
from jax._src import core
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.state import discharge as state_discharge

TESTED_JAX_VERSIONS = ("0.10.2", "0.12.0.1")
ALLOW_UNTESTED_ENV = "JAX_REMAT_REFS_ALLOW_UNTESTED_JAX"

JAX_VERSION = jax.__version__
# 0.12 made `core.Jaxpr` carry its own consts (no ClosedJaxpr in most APIs),
# gave `new_ref` a `pin` parameter and made fancy transpose rules return logs.
JAXPR_IS_CLOSED = hasattr(core.Jaxpr, "consts")
NEW_REF_HAS_PIN = "pin" in core.new_ref.__code__.co_varnames
# 0.12 passes `live_ins` to DCE rules; 0.10.2's `remat_dce` also drops a remat
# whose only effect is, say, a debug callback (its effects test is inverted).
DCE_RULE_TAKES_LIVE_INS = JAXPR_IS_CLOSED
# 0.10.2's swap transpose accumulates into the swapped-in value even when it
# is a constant (no cotangent slot) once the ref's cotangent exists; remat's
# transpose creates those cotangent refs, so this shows up under remat.
SWAP_TRANSPOSE_ASSUMES_LINEAR_VALUE = not JAXPR_IS_CLOSED
# 0.10.2's partial evaluation loses ref writes made by loops inside a remat
# when that remat sits in another loop or the loop in another loop: inside a
# remat, loops that write refs are put into value form (see _control_flow).
NESTED_LOOP_PE_LOSES_WRITES = not JAXPR_IS_CLOSED


def check_jax_version() -> None:
  if JAX_VERSION in TESTED_JAX_VERSIONS:
    return
  if os.environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0"):
    return
  raise ImportError(
      f"jax_remat_refs patches JAX's remat internals and was tested only on "
      f"jax {' and '.join(TESTED_JAX_VERSIONS)}; the installed jax is "
      f"{JAX_VERSION}. Install a tested version, or set {ALLOW_UNTESTED_ENV}=1 "
      f"to import it anyway at your own risk.")


def new_ref_params(ref_aval) -> dict[str, Any]:
  """Params of a `new_ref` equation that recreates a ref of type `ref_aval`."""
  params = dict(memory_space=ref_aval.memory_space, kind=ref_aval.kind)
  if NEW_REF_HAS_PIN:
    params["pin"] = False
  return params


def close(jaxpr: core.Jaxpr):
  """A consts-free jaxpr in the form JAX APIs taking 'a closed jaxpr' want."""
  assert not jaxpr.constvars
  return jaxpr if JAXPR_IS_CLOSED else core.ClosedJaxpr(jaxpr, [])


def open_closed(closed) -> tuple[core.Jaxpr, list[Any]]:
  """Inverse of `close`: (jaxpr with constvars, consts)."""
  if JAXPR_IS_CLOSED:
    return closed, list(closed.consts)
  return closed.jaxpr, list(closed.consts)


def discharge_state(jaxpr: core.Jaxpr, should_discharge) -> tuple[core.Jaxpr, list]:
  """Discharge the refs selected by `should_discharge` (one per invar)."""
  out = state_discharge.discharge_state(close(jaxpr),
                                        should_discharge=should_discharge)
  return open_closed(out)


def partial_eval_nounits(jaxpr: core.Jaxpr, unknowns, instantiate):
  """`pe.partial_eval_jaxpr_nounits` on a consts-free jaxpr.

  Returns (known jaxpr, known consts, unknown jaxpr, unknown consts,
  out_unknowns, residual avals)."""
  # Refs may pass from the known to the unknown part as residuals: both run
  # inside one traced function, so the returned-ref check does not apply.
  with config.mutable_array_checks(False):
    known, unknown, out_uk, res_avals = pe.partial_eval_jaxpr_nounits(
        close(jaxpr), unknowns, instantiate)
  kj, kc = open_closed(known)
  uj, uc = open_closed(unknown)
  return kj, kc, uj, uc, out_uk, res_avals


def backward_pass(jaxpr: core.Jaxpr, consts, args, cts):
  """`ad.backward_pass3`; returns its log dict (always {} before 0.12)."""
  logs = ad.backward_pass3(jaxpr, False, consts, args, cts)
  return logs or {}


def transpose_rule_result(logs):
  """What a fancy transpose rule returns on this version."""
  return logs if JAXPR_IS_CLOSED else None
