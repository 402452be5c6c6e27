"""Refs declared read-only (deprecated).

`read_only_ref` made a ref that a ``"once"`` remat rematerialized from the
live ref, checked by checksum, to avoid copying it. In value form a remat
reads each ref once, at entry, and a loop that never writes a ref hoists
that read out of the loop, so weights in a plain `jax.new_ref` already cost
what weights in an array cost; the declaration buys nothing and is
deprecated. It keeps working: the ref is an ordinary ref whose writes inside
a remat body are still a trace-time `RematRefError`.
"""
from __future__ import annotations

import warnings

from jax._src import core
from jax._src.state.types import AccumEffect, WriteEffect

from jax_remat_refs import _errors
from jax_remat_refs import _jaxpr_util as ju

READ_ONLY_KIND = "jax_remat_refs.read_only"


def read_only_ref(init_val, *, memory_space=None):
  """Deprecated: use `jax.new_ref`. A ref declared not to be written inside a
  remat body (checked at trace time)."""
  warnings.warn(
      "jax_remat_refs.read_only_ref is deprecated: jax.remat rematerializes "
      "refs in value form, where a plain jax.new_ref costs no copy; use "
      "jax.new_ref instead.", DeprecationWarning, stacklevel=2)
  return core.new_ref(init_val, memory_space=memory_space, kind=READ_ONLY_KIND)


def is_read_only(aval) -> bool:
  return getattr(aval, "kind", None) == READ_ONLY_KIND


def check_not_written(jaxpr: core.Jaxpr) -> None:
  """`RematRefError` if the body writes a ref declared read-only."""
  for i, (v, w) in enumerate(zip(jaxpr.invars, ju.written_ref_invars(jaxpr))):
    if w and is_read_only(v.aval):
      _errors.raise_read_only_written(jaxpr, i, (WriteEffect, AccumEffect))
