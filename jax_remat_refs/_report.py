"""Making the cost of ref snapshots visible.

`jax.ad_checkpoint.saved_residuals` / `print_saved_residuals` and the
`jax_log_checkpoint_residuals` log list each snapshot of an external ref as
its own line, naming the ref and saying it was taken at remat entry.

A snapshot is a `get` of the whole ref bound under a name-stack scope that
carries the ref's description; the residual report recognises that scope.
"""
from __future__ import annotations

import contextlib
import logging
import re

from jax._src import ad_checkpoint as ac
from jax._src import config
from jax._src import source_info_util

from jax._src.state.types import AbstractRef

from jax_remat_refs import _errors

logger = logging.getLogger("jax_remat_refs")

_SCOPE = "remat_ref_snapshot"
_SCOPE_RE = re.compile(_SCOPE + r":(?P<what>[^/)]*)")


def _scope_name(what: str) -> str:
  return f"{_SCOPE}:{what.replace('/', '|')}"


@contextlib.contextmanager
def snapshot_scope(what: str):
  with source_info_util.extend_name_stack(_scope_name(what)):
    yield


def input_labels(jaxpr) -> tuple[str | None, ...]:
  """Descriptions of a freshly traced remat body's ref inputs."""
  return tuple(_errors.describe_input(jaxpr, i)
               if hasattr(v.aval, "inner_aval") else None
               for i, v in enumerate(jaxpr.invars))


def snapshot_label(jaxpr, i: int, policy) -> str:
  label = policy.label(i) if hasattr(policy, "label") else None
  return label or _errors.describe_input(jaxpr, i)


def log_snapshots(labels: list[str], n_saved_reads: int) -> None:
  level = (logging.WARNING if config.log_checkpoint_residuals.value
           else logging.DEBUG)
  if not (labels or n_saved_reads) or not logger.isEnabledFor(level):
    return
  lines = [f"  snapshot of the {l} taken at remat entry" for l in labels]
  if n_saved_reads:
    lines.append(f"  {n_saved_reads} value(s) read from external refs in the "
                 "forward pass (saved instead of snapshots)")
  logger.log(level, "remat-decorated function saving ref state:\n%s",
             "\n".join(lines))


UPSTREAM_SAVED_RESIDUALS = ac._saved_residuals


def saved_residuals_with_refs(jaxpr, arg_names):
  """`ac._saved_residuals`, with our snapshots described as such."""
  results = UPSTREAM_SAVED_RESIDUALS(jaxpr, arg_names)
  res = [v for v in jaxpr.outvars]
  producers = {v: e for e in jaxpr.eqns for v in e.outvars}
  out = []
  for (aval, src), v in zip(results, _order_like_upstream(jaxpr, res)):
    eqn = producers.get(v)
    m = eqn is not None and _SCOPE_RE.search(str(eqn.source_info.name_stack))
    if m:
      what = m.group("what")
      src = f"snapshot of the {what} taken at remat entry"
    elif isinstance(aval, AbstractRef):
      src = ("the ref itself, declared read-only: rematerialized from the live "
             f"ref, no copy ({src})")
    out.append((aval, src))
  return out


def _order_like_upstream(jaxpr, res):
  """Residual vars in the order upstream's report lists them (literals,
  constants, arguments, then equation outputs in program order)."""
  from jax._src import core
  from jax._src.lax import lax as lax_internal
  subst = {e.outvars[0]: e.invars[0] for e in jaxpr.eqns
           if e.primitive is lax_internal.reduce_precision_p}
  def through(v):
    while v in subst:
      v = subst[v]
    return v
  lits = [x for x in res if isinstance(x, core.Literal)]
  vars_ = {through(x) for x in res if not isinstance(x, core.Literal)}
  order = list(lits)
  order += [v for v in jaxpr.constvars if v in vars_]
  order += [v for v in jaxpr.invars if v in vars_]
  order += [v for e in jaxpr.eqns for v in e.outvars if v in vars_]
  return order


UPSTREAM_SAVED_RESIDUALS_API = ac.saved_residuals


def saved_residuals(f, *args, **kwargs):
  """`jax.ad_checkpoint.saved_residuals`; read-only refs are residuals by
  reference, which upstream's returned-ref check would reject here."""
  with config.mutable_array_checks(False):
    return UPSTREAM_SAVED_RESIDUALS_API(f, *args, **kwargs)


def install():
  ac._saved_residuals = saved_residuals_with_refs
  ac.saved_residuals = saved_residuals


def uninstall():
  ac._saved_residuals = UPSTREAM_SAVED_RESIDUALS
  ac.saved_residuals = UPSTREAM_SAVED_RESIDUALS_API
