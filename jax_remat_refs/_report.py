"""Naming the values a remat reads from refs in residual reports.

In value form a remat reads each of its refs at entry; when the
rematerialization needs such a value, `jax.ad_checkpoint.saved_residuals` /
`print_saved_residuals` would list it as the output of a `get`. Each entry
read is bound under a name-stack scope carrying the ref's description, and
the report names it: "value of the argument x_ref of type Ref{f32[3]} at
remat entry".
"""
from __future__ import annotations

import contextlib
import re

from jax._src import ad_checkpoint as ac
from jax._src import config
from jax._src import source_info_util

_SCOPE = "remat_ref_entry"
_SCOPE_RE = re.compile(_SCOPE + r":(?P<what>[^/)]*)")


@contextlib.contextmanager
def entry_read_scope(what: str):
  scope = f"{_SCOPE}:{what.replace('/', '|')}"
  with source_info_util.extend_name_stack(scope):
    yield


UPSTREAM_SAVED_RESIDUALS = ac._saved_residuals
UPSTREAM_SAVED_RESIDUALS_API = ac.saved_residuals


def saved_residuals_with_refs(jaxpr, arg_names):
  """`ac._saved_residuals`, with entry reads of refs described as such."""
  results = UPSTREAM_SAVED_RESIDUALS(jaxpr, arg_names)
  # Upstream lists equation outputs last, in program order, looking through
  # reduce_precision.
  subst = {e.outvars[0]: e.invars[0] for e in jaxpr.eqns
           if e.primitive.name == "reduce_precision"}
  res = set()
  for v in jaxpr.outvars:
    while v in subst:
      v = subst[v]
    res.add(v)
  producers = [e for e in jaxpr.eqns for v in e.outvars if v in res]
  head = results[:len(results) - len(producers)]
  tail = results[len(results) - len(producers):]
  return head + [(aval, _label(eqn, src))
                 for (aval, src), eqn in zip(tail, producers)]


def _label(eqn, src: str) -> str:
  m = _SCOPE_RE.search(str(eqn.source_info.name_stack))
  return f"value of the {m['what']} at remat entry" if m else src


def saved_residuals(f, *args, **kwargs):
  """`jax.ad_checkpoint.saved_residuals`, callable on functions that take
  refs (upstream's returned-ref check rejects the vjp closure otherwise)."""
  with config.mutable_array_checks(False):
    return UPSTREAM_SAVED_RESIDUALS_API(f, *args, **kwargs)
