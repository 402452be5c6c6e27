"""`jax_remat3` (JAX's next remat implementation) and refs.

With ``jax.config.update('jax_remat3', True)``, `jax.checkpoint` hands the
function to `ad_checkpoint.remat3`, which replays the function's ref effects
when the backward pass rematerializes (jax 0.12.0.1: wrong gradients, also
through a ``"no_grad_no_remat"`` ref the function makes itself) or fails
inside JAX (0.10.2: AssertionError).

`remat3` (the name `checkpoint` looks up) is replaced by `remat3_entry`. Its
function traces the decorated function once on the call's arguments: one
that takes, closes over or makes refs is rematerialized by `jax.checkpoint`
with ``jax_remat3`` off (value form, `_value_form`); any other goes to
upstream's remat3 unchanged (which traces it again). Inside such a function
every remat stays on the value-form path.
"""
from __future__ import annotations

import functools
import threading

import jax
from jax._src import ad_checkpoint as ac
from jax._src import config as jax_config
from jax._src import core

from jax_remat_refs import _compat
from jax_remat_refs import _jaxpr_util as ju

UPSTREAM_REMAT3 = getattr(ac, "remat3", None)
# Whether `jax.checkpoint` can reach remat3 at all (JAX before 0.10.2 has no
# jax_remat3 option).
REACHABLE = hasattr(jax_config, "remat3") and UPSTREAM_REMAT3 is not None

_tls = threading.local()


def remat3_entry(f=None, /, policy=None, static_argnums=(), static_argnames=(),
                 **kwargs):
  """`ad_checkpoint.remat3`, sending functions that use refs to value form."""
  if f is None:
    return functools.partial(remat3_entry, policy=policy,
                             static_argnums=static_argnums,
                             static_argnames=static_argnames, **kwargs)
  upstream = UPSTREAM_REMAT3(f, policy=policy, static_argnums=static_argnums,
                             static_argnames=static_argnames, **kwargs)
  value_form = functools.partial(
      _without_remat3, f, prevent_cse=kwargs.get("prevent_cse", True),
      policy=policy, static_argnums=static_argnums,
      static_argnames=static_argnames)

  @functools.wraps(f)
  def remat3_or_value_form(*args, **kw):
    if (getattr(_tls, "depth", 0) or
        _uses_refs(f, static_argnums, static_argnames, args, kw)):
      return value_form(*args, **kw)
    return upstream(*args, **kw)
  return remat3_or_value_form


def _without_remat3(f, *args, prevent_cse, policy, static_argnums,
                    static_argnames, **kw):
  _tls.depth = getattr(_tls, "depth", 0) + 1
  try:
    with jax_config.remat3(False):
      return ac.checkpoint(f, prevent_cse=prevent_cse, policy=policy,
                           static_argnums=static_argnums,
                           static_argnames=static_argnames)(*args, **kw)
  finally:
    _tls.depth -= 1


def _uses_refs(f, static_argnums, static_argnames, args, kwargs) -> bool:
  """Whether `f(*args, **kwargs)` takes, closes over or makes refs."""
  static_kw = {k: kwargs[k] for k in _tuple(static_argnames) if k in kwargs}
  dynamic_kw = {k: v for k, v in kwargs.items() if k not in static_kw}
  g = functools.partial(f, **static_kw)
  closed = jax.make_jaxpr(g, static_argnums=static_argnums)(*args,
                                                           **dynamic_kw)
  jaxpr, consts = _compat.open_closed(closed)
  return (any(ju.is_ref(v) for v in (*jaxpr.constvars, *jaxpr.invars)) or
          any(ju.is_ref(c) for c in consts) or
          core.internal_mutable_array_effect in jaxpr.effects)


def _tuple(names):
  return (names,) if isinstance(names, str) else tuple(names)
