"""Ref-correct `jax.remat` / `jax.checkpoint`.

Importing this package activates it: a remat-decorated function's effects on
external refs then happen once, in the forward pass, and the rematerializing
pass sees exactly the values the forward pass saw.
"""
from __future__ import annotations

import contextlib

from jax_remat_refs import _compat

# Errors, warnings and source locations point at the user's code, not ours.
import os as _os  # noqa: E402
from jax._src import source_info_util as _siu, traceback_util as _tbu  # noqa: E402
_siu.register_exclusion(_os.path.dirname(__file__))
_tbu.register_exclusion(_os.path.dirname(__file__))

_compat.check_jax_version()

from jax_remat_refs import _install  # noqa: E402
from jax_remat_refs._errors import RematRefError, RematRefWarning  # noqa: E402
from jax_remat_refs._semantics import MODES, ONCE, REPLAY, FORBID  # noqa: E402
from jax_remat_refs.api import (  # noqa: E402
    checkpoint, remat, ref_effects_default, set_ref_effects_default,
    get_ref_effects_default)

__version__ = "0.1.0"

_active = False


def activate() -> None:
  """Install the ref-aware remat rules (idempotent). A JAX that carries the
  upstream patch (`make patch`) has them already: nothing is installed."""
  global _active
  if not _compat.JAX_HAS_VALUE_FORM:
    _install.install()
  _active = True


def deactivate() -> None:
  """Restore upstream JAX's remat rules (idempotent)."""
  global _active
  _install.uninstall()
  _active = False


def is_active() -> bool:
  return _active


@contextlib.contextmanager
def upstream_behavior():
  """Run a block with upstream JAX's remat rules, for A/B comparisons."""
  was_active = _active
  deactivate()
  try:
    yield
  finally:
    if was_active:
      activate()


activate()
