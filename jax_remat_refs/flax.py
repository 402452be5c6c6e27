"""A ref-correct drop-in for Flax NNX's ``nnx.remat``.

``nnx.remat`` in graph mode with graph updates (Flax's default) loses every
write a rematerialized function makes to a ref-backed ``nnx.Variable``
(one created under ``nnx.var_defaults(ref=True)``): Flax's inner merge copies
each such Variable into a fresh ``jax.new_ref`` inside the checkpointed
function, the body writes the copy, and the inner split then reports the copy
as "no update" because it takes it for the caller's ref. BatchNorm running
statistics and Dropout RNG counters therefore never change. See
docs/flax-nnx-remat-report.md.

``remat`` here accepts exactly what ``nnx.remat`` accepts. When a call's
arguments hold ref-backed Variables it runs Flax's update-collecting path
(``graph_updates=False``), which hands the refs themselves to
``jax.checkpoint``; with this package active, their writes then happen once,
in the forward pass, and the recomputation reads the values the forward pass
saw, as if there were no remat. Calls without ref-backed Variables go to
``nnx.remat`` unchanged.

Limitation: on that path, Flax does not propagate changes to the graph
*structure* of the inputs (adding or removing attributes or Variables inside
the function); the shim raises ``ValueError`` instead of dropping them. Variable
values are propagated.
"""
from __future__ import annotations

import functools
import inspect

try:
  import flax
  from flax import nnx
  from flax.nnx import graphlib as _graphlib
  from flax.nnx import variablelib as _variablelib
except ImportError as _err:  # pragma: no cover - depends on the environment
  raise ImportError(
      "jax_remat_refs.flax needs Flax: pip install 'jax-remat-refs[flax]' "
      f"(import failed: {_err})") from _err

import jax_remat_refs  # noqa: F401  (activates the ref-aware remat rules)

if "graph_updates" not in inspect.signature(nnx.remat).parameters:
  raise ImportError(
      "jax_remat_refs.flax needs a Flax whose nnx.remat takes graph= and "
      f"graph_updates= (0.12.8 or newer); found flax {flax.__version__}")

__all__ = ["remat", "checkpoint", "has_ref_variables"]

_MISSING = object()


def _is_ref_variable(node) -> bool:
  return (isinstance(node, nnx.Variable)
          and _variablelib.is_array_ref(node.get_raw_value()))


def has_ref_variables(tree) -> bool:
  """Whether `tree` (a pytree that may hold NNX graph nodes) reaches an
  ``nnx.Variable`` whose value is a ``jax.Ref``."""
  return any(_is_ref_variable(node)
             for _, node in nnx.iter_graph(tree, graph=True))


def _no_structure_changes(f):
  """`f`, raising if it changes the graph structure of its arguments (which
  the update-collecting path would silently drop)."""
  @functools.wraps(f)
  def checked(*args, **kwargs):
    before = nnx.graphdef((args, kwargs), graph=True)
    out = f(*args, **kwargs)
    if nnx.graphdef((args, kwargs), graph=True) != before:
      raise ValueError(
          "jax_remat_refs.flax.remat: the function changed the graph structure "
          "of its arguments (added or removed attributes or Variables). With "
          "ref-backed Variables this cannot be propagated out of remat; create "
          "the attributes before calling it.")
    return out
  return checked


def remat(f=_MISSING, *, prevent_cse: bool = True,
          static_argnums: int | tuple[int, ...] = (), policy=None,
          graph: bool | None = None, graph_updates: bool | None = None):
  """Drop-in for ``nnx.remat`` that keeps writes to ref-backed Variables.

  Same call forms as ``nnx.remat``: ``remat(f, ...)``, ``@remat`` and
  ``@remat(prevent_cse=..., static_argnums=..., policy=..., graph=...,
  graph_updates=...)``.
  """
  if f is _MISSING:
    return functools.partial(
        remat, prevent_cse=prevent_cse, static_argnums=static_argnums,
        policy=policy, graph=graph, graph_updates=graph_updates)

  options = dict(prevent_cse=prevent_cse, static_argnums=static_argnums,
                 policy=policy)
  if graph is None:
    graph = _graphlib.set_graph_mode.current_value()
  if graph_updates is None:
    graph_updates = _graphlib.set_graph_updates.current_value()
  if not graph or not graph_updates:
    # Flax's update-collecting path already passes the refs through.
    return nnx.remat(f, graph=graph, graph_updates=graph_updates, **options)

  flax_default = nnx.remat(f, graph=True, graph_updates=True, **options)
  keeps_ref_writes = nnx.remat(_no_structure_changes(f), graph=True,
                               graph_updates=False, **options)

  @functools.wraps(f)
  def remat_wrapper(*args, **kwargs):
    if has_ref_variables((args, kwargs)):
      return keeps_ref_writes(*args, **kwargs)
    return flax_default(*args, **kwargs)

  return remat_wrapper


checkpoint = remat
