"""What a remat does with the effects of its body on external refs.

* ``"once"`` (default): effects on external refs (arguments or closed over)
  happen once, in the forward pass; the rematerializing pass recomputes from
  the values the refs held at remat entry (value form, `_value_form`).
* ``"replay"``: upstream JAX's behaviour; the rematerializing pass runs the
  effects again on the real refs (and its reads see the mutated state).
* ``"forbid"``: touching an external ref inside the remat body is an error at
  trace time.

The choice for one remat is made when it is traced (`remat_bind`): a
``"once"`` remat becomes a pure remat between entry reads and write-backs; a
``"replay"`` one keeps its effects and carries the choice in its ``policy``
parameter (wrapped in `RefEffectsPolicy`), so that it survives nesting,
jaxpr caching and printing. A remat without a wrapped policy
follows the global default, the ``jax_remat_ref_effects`` config option
(environment variable ``JAX_REMAT_REF_EFFECTS``), which is part of the jit
cache key.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from jax._src import config as jax_config

from jax_remat_refs import _compat

ONCE, REPLAY, FORBID = "once", "replay", "forbid"
MODES = (ONCE, REPLAY, FORBID)
ENV_VAR = "JAX_REMAT_REF_EFFECTS"


def validate_mode(mode: Any) -> str:
  if not isinstance(mode, str):
    raise TypeError(
        f"ref_effects must be a string, one of {MODES}; got {mode!r} of type "
        f"{type(mode).__name__}.")
  if mode not in MODES:
    raise ValueError(
        f"ref_effects must be one of {MODES}; got {mode!r}.")
  return mode


def _default_from_env() -> str:
  value = os.environ.get(ENV_VAR, ONCE) or ONCE
  try:
    return validate_mode(value)
  except ValueError as e:
    raise ValueError(f"environment variable {ENV_VAR}: {e}") from None


if _compat.JAX_HAS_REF_EFFECTS_OPTION:  # a JAX carrying the upstream series
  ref_effects_default = jax_config.remat_ref_effects
else:
  ref_effects_default = _compat.enum_state_in_trace_context(
      name="jax_remat_ref_effects",
      enum_values=list(MODES),
      default=_default_from_env(),
      help=("What jax.remat does with its body's effects on external refs: "
            "'once' (forward pass only), 'replay' (upstream behaviour) or "
            "'forbid' (error). Set by jax_remat_refs."))


def default_mode() -> str:
  return ref_effects_default.value


class RefEffectsPolicy:
  """A remat policy that also carries the ref-effects choice.

  Calls go to the wrapped policy (``nothing_saveable`` when there is none), so
  every upstream rule that calls the policy keeps working unchanged.
  """
  __slots__ = ("mode", "base", "__weakref__")

  def __init__(self, mode: str, base: Callable[..., Any] | None):
    self.mode = validate_mode(mode)
    self.base = base

  def __call__(self, prim, *args, **params):
    if self.base is None:
      return False  # nothing_saveable
    return self.base(prim, *args, **params)

  def __eq__(self, other):
    return (type(other) is RefEffectsPolicy and self.mode == other.mode and
            self.base == other.base)

  def __hash__(self):
    return hash((RefEffectsPolicy, self.mode, self.base))

  def __repr__(self):
    base = getattr(self.base, "__name__", repr(self.base))
    return f"RefEffects({self.mode!r}, policy={base})"


def replay_policy(policy):
  """The policy param of a ``"replay"`` remat with `policy`."""
  return RefEffectsPolicy(REPLAY, unwrap_policy(policy))


def unwrap_policy(policy):
  return policy.base if isinstance(policy, RefEffectsPolicy) else policy


def mode_of(policy) -> str:
  """The ref-effects mode of a remat equation with this `policy` param."""
  if isinstance(policy, RefEffectsPolicy):
    return policy.mode
  return default_mode()
