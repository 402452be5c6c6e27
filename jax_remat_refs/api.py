"""`checkpoint` / `remat` with an explicit choice of ref-effect semantics."""
from __future__ import annotations

import contextlib
from typing import Callable

import jax

from jax_remat_refs import _compat
from jax_remat_refs import _semantics as sem


def checkpoint(fun: Callable | None = None, *, prevent_cse=True, policy=None,
               static_argnums=(), ref_effects: str = sem.ONCE, **kwargs):
  """`jax.checkpoint` with a choice of what happens to external refs.

  Args:
    fun, prevent_cse, policy, static_argnums: as for `jax.checkpoint`.
    ref_effects: what the rematerializing pass does with the function's
      effects on refs it did not create (arguments or closed over):
      ``"once"`` (default) runs them in the forward pass only and
      rematerializes from private copies of the values seen at entry;
      ``"replay"`` runs them again on the real refs (upstream JAX's
      behaviour; recomputed reads then see mutated state); ``"forbid"``
      raises `RematRefError` at trace time.

  Usable as ``checkpoint(f, ...)``, ``@checkpoint``,
  ``@checkpoint(ref_effects=...)`` and with `functools.partial`.
  """
  sem.validate_mode(ref_effects)
  if fun is None:
    return lambda f: checkpoint(f, prevent_cse=prevent_cse, policy=policy,
                                static_argnums=static_argnums,
                                ref_effects=ref_effects, **kwargs)
  if not callable(fun):
    raise TypeError(
        f"checkpoint/remat expects a callable as its first argument; got "
        f"{fun!r} of type {type(fun).__name__}.")
  if policy is not None and not callable(policy):
    raise TypeError(f"checkpoint/remat policy must be callable; got {policy!r}.")
  if _compat.CHECKPOINT_TAKES_REF_EFFECTS:  # JAX with the upstream series
    return jax.checkpoint(fun, prevent_cse=prevent_cse, policy=policy,
                          static_argnums=static_argnums,
                          ref_effects=ref_effects, **kwargs)
  return jax.checkpoint(fun, prevent_cse=prevent_cse,
                        policy=sem.RefEffectsPolicy(ref_effects, policy),
                        static_argnums=static_argnums, **kwargs)


remat = checkpoint


def set_ref_effects_default(mode: str) -> None:
  """Set the mode plain `jax.remat` uses (also: env JAX_REMAT_REF_EFFECTS)."""
  jax.config.update("jax_remat_ref_effects", sem.validate_mode(mode))


def get_ref_effects_default() -> str:
  return sem.default_mode()


@contextlib.contextmanager
def ref_effects_default(mode: str):
  """Within the block, plain `jax.remat` uses `mode` for external refs."""
  with sem.ref_effects_default(sem.validate_mode(mode)):
    yield
