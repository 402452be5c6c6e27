"""Everything the package installs into JAX, in one table.

Each entry is (owner, key, replacement): `owner[key]` where the owner is one
of JAX's rule tables, else the attribute `key` of `owner`. `install` saves
what it replaces and `uninstall` puts it back.
"""
from __future__ import annotations

from jax._src import ad_checkpoint as ac
from jax._src.lax.control_flow import loops

from jax_remat_refs import _fixes
from jax_remat_refs import _loops
from jax_remat_refs import _remat3
from jax_remat_refs import _report
from jax_remat_refs import _value_form


def entries():
  out = [
      # A remat whose body has refs is bound in value form.
      (ac.remat_p, "bind", _value_form.remat_bind),
      # Reads of refs a scan never writes are hoisted out of the loop.
      (loops, "_scan_known_hoisting", _loops.scan_known_hoisting),
      # Residual reports name the values read from refs at remat entry.
      (ac, "_saved_residuals", _report.saved_residuals_with_refs),
      (ac, "saved_residuals", _report.saved_residuals),
  ]
  if _remat3.REACHABLE:
    # Under jax_remat3, functions with refs are rematerialized in value form.
    out.append((ac, "remat3", _remat3.remat3_entry))
  return out + _fixes.entries()


_saved: list = []   # (owner, key, what was there), in installation order
_ABSENT = object()  # what was there: nothing (a rule table without the key)


def _get(owner, key):
  if isinstance(owner, dict):
    return owner.get(key, _ABSENT)
  return getattr(owner, key)


def _set(owner, key, value):
  if value is _ABSENT:
    del owner[key]
  elif isinstance(owner, dict):
    owner[key] = value
  else:
    setattr(owner, key, value)


def install() -> None:
  if _saved:
    return
  for owner, key, new in entries():
    _saved.append((owner, key, _get(owner, key)))
    _set(owner, key, new)


def uninstall() -> None:
  while _saved:
    _set(*_saved.pop())


def installed() -> bool:
  return bool(_saved)
