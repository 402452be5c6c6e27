"""Every difference between the JAX versions we support, in one place.

The rest of the package imports JAX internals only through this module or
through modules whose API is identical on every supported version.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import jax
from jax._src import ad_checkpoint as ac
from jax._src import core
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.state import primitives as state_primitives
from jax._src.state import discharge as state_discharge

TESTED_JAX_VERSIONS = ("0.10.2", "0.12.0.1")
ALLOW_UNTESTED_ENV = "JAX_REMAT_REFS_ALLOW_UNTESTED_JAX"

JAX_VERSION = jax.__version__
# 0.12 made `core.Jaxpr` carry its own consts (no ClosedJaxpr in most APIs).
JAXPR_IS_CLOSED = hasattr(core.Jaxpr, "consts")
# A `remat_p` DCE rule that takes `live_ins` is the one that keeps effectful
# remats whose outputs are unused; the older form (0.10.x, 0.11.x) drops a
# remat whose only effect is, say, a debug callback.
DCE_RULE_KEEPS_EFFECTS = "live_ins" in inspect.signature(
    pe.dce_rules[ac.remat_p]).parameters
# The `swap` transpose rule of 0.10.x accumulates a cotangent into the value
# swapped in even when that value is a constant (not a `GradAccum`); the fixed
# rule checks for it.
SWAP_TRANSPOSE_CHECKS_CONSTANT = "GradAccum" in inspect.getsource(
    ad.fancy_transposes[state_primitives.swap_p])


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


def close(jaxpr: core.Jaxpr):
  """A consts-free jaxpr in the form JAX APIs taking 'a closed jaxpr' want."""
  assert not jaxpr.constvars
  return jaxpr if JAXPR_IS_CLOSED else core.ClosedJaxpr(jaxpr, [])


# The types of the jaxprs found in equation params.
JAXPR_TYPES = (core.Jaxpr,) if JAXPR_IS_CLOSED else (core.Jaxpr, core.ClosedJaxpr)


def open_closed(closed) -> tuple[core.Jaxpr, list[Any]]:
  """Inverse of `close`: (jaxpr with constvars, consts). An open jaxpr is
  returned as it is."""
  if JAXPR_IS_CLOSED or isinstance(closed, core.Jaxpr):
    return closed, list(getattr(closed, "consts", ()))
  return closed.jaxpr, list(closed.consts)


def discharge_state(jaxpr: core.Jaxpr, should_discharge) -> tuple[core.Jaxpr, list]:
  """Discharge the refs selected by `should_discharge` (one per invar) of a
  consts-free jaxpr: (jaxpr with constvars, consts)."""
  out = state_discharge.discharge_state(close(jaxpr),
                                        should_discharge=list(should_discharge))
  return open_closed(out)


def effect_input(effect):
  """The jaxpr var a `JaxprInputEffect` (e.g. a `RefEffect`) is about."""
  return effect.input
