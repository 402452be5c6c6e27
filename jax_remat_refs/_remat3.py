"""`jax_remat3` (JAX's next remat implementation) and external refs.

With ``jax.config.update('jax_remat3', True)``, `jax.checkpoint` hands the
function to `ad_checkpoint.remat3`, which traces it and binds a `RematTraced`
hi-primitive. That implementation has no notion of refs the function did not
create: their last values are read again when the backward pass
rematerializes (wrong gradients on jax 0.12.0.1), or the ref ends up as a
residual returned from a jitted trace (`AssertionError` in
`_check_no_returned_refs` on jax 0.10.2).

This module guards the one place where remat3 is entered from
`jax.checkpoint`:

* `ad_checkpoint.remat3` (the name `checkpoint` looks up) is replaced by a
  wrapper that runs upstream's remat3 unchanged, inside a *frame* recording
  which function it is rematerializing.
* `RematTraced.__init__` is wrapped. When the `RematTraced` that upstream's
  `_remat3` builds for that function (the top-level one, built right after
  tracing) uses a ref among its inputs -- an argument or a closed-over ref --
  the guard aborts the remat3 path before anything has been bound.
* The wrapper then runs the function through the remat2 path
  (`jax.checkpoint` with ``jax_remat3`` off for its extent), whose rules
  `jax_remat_refs` makes ref-correct, with the same policy, static arguments
  and ref-effects mode.

So a function that touches no external ref goes through upstream's remat3
exactly as before (it is traced once, by upstream); one that does is traced a
second time and gets the remat2 semantics (ref effects once, in the forward
pass, by default). A remat3 `RematTraced` with external refs built outside the
guard (code calling `ad_checkpoint._remat3` directly, or a remat3 function
created before `install()` on jax 0.10.2, where `checkpoint` picks the
implementation when it decorates) raises `RematRefError` instead of computing
a wrong answer.
"""
from __future__ import annotations

import functools
import sys
import threading

from jax._src import ad_checkpoint as ac
from jax._src import config as jax_config
from jax._src import core
from jax._src import source_info_util
from jax._src.state.types import AbstractRef

from jax_remat_refs import _semantics as sem
from jax_remat_refs import _errors
from jax_remat_refs import _jaxpr_util as ju
from jax_remat_refs._errors import RematRefError

_tls = threading.local()

# Originals, captured once at import (before any install()).
_UPSTREAM_REMAT3 = getattr(ac, "remat3", None)
_UPSTREAM_INIT = (ac.RematTraced.__init__ if hasattr(ac, "RematTraced")
                  else None)
_AC_FILE = ac.__file__
_installed = False
# Whether `jax.checkpoint` can reach remat3 at all (the `jax_remat3` option;
# JAX before 0.11 has none).
REACHABLE = (hasattr(jax_config, "remat3") and _UPSTREAM_REMAT3 is not None
             and _UPSTREAM_INIT is not None)


def install() -> None:
  """Route remat3 calls whose function uses external refs to the ref-aware
  remat2 path (idempotent)."""
  global _installed
  if not REACHABLE:
    return
  ac.remat3 = _remat3_entry
  ac.RematTraced.__init__ = _guarded_init
  _installed = True


def uninstall() -> None:
  """Restore upstream's remat3 (idempotent)."""
  global _installed
  if not REACHABLE:
    return
  ac.remat3 = _UPSTREAM_REMAT3
  ac.RematTraced.__init__ = _UPSTREAM_INIT
  _installed = False


def is_installed() -> bool:
  return _installed


# --------------------------------------------------------------------------
# frames: which remat3 call is being traced

class _Frame:
  __slots__ = ("fun", "pending")

  def __init__(self, fun):
    self.fun = fun
    self.pending = True   # its top-level RematTraced is not built yet


class _UseRemat2(Exception):
  """Internal: the top-level RematTraced of `frame` would take refs."""

  def __init__(self, frame, what):
    super().__init__(what)
    self.frame = frame


def _stack() -> list:
  s = getattr(_tls, "stack", None)
  if s is None:
    s = _tls.stack = []
  return s


def _in_fallback() -> bool:
  return getattr(_tls, "fallback_depth", 0) > 0


# --------------------------------------------------------------------------
# the remat3 entry point that `jax.checkpoint` calls

def _remat3_entry(f=None, /, policy=None, static_argnums=(),
                  static_argnames=(), **kwargs):
  if f is None:
    return lambda g: _remat3_entry(g, policy=policy,
                                   static_argnums=static_argnums,
                                   static_argnames=static_argnames, **kwargs)
  # Upstream's remat3 never sees our policy wrapper: pure functions get
  # exactly the policy they would get from jax.checkpoint.
  upstream = _UPSTREAM_REMAT3(f, policy=sem.unwrap_policy(policy),
                              static_argnums=static_argnums,
                              static_argnames=static_argnames, **kwargs)

  @functools.wraps(f)
  def remat3_with_ref_guard(*args, **kw):
    if _in_fallback():
      # Inside a function already sent to remat2 (jax 0.10.2 decides the
      # implementation at decoration time): stay on remat2.
      return _remat2(f, policy, static_argnums, static_argnames, kwargs,
                     args, kw)
    frame = _Frame(f)
    stack = _stack()
    stack.append(frame)
    try:
      return upstream(*args, **kw)
    except _UseRemat2 as e:
      if e.frame is not frame:
        raise
    finally:
      stack.pop()
    return _remat2(f, policy, static_argnums, static_argnames, kwargs,
                   args, kw)

  return remat3_with_ref_guard


def _remat2(f, policy, static_argnums, static_argnames, remat3_kwargs, args,
            kwargs):
  """`f(*args, **kwargs)` through jax.checkpoint's remat2 implementation."""
  prevent_cse = remat3_kwargs.get("prevent_cse", True)
  _tls.fallback_depth = getattr(_tls, "fallback_depth", 0) + 1
  try:
    with jax_config.remat3(False):
      fun = ac.checkpoint(f, prevent_cse=prevent_cse, policy=policy,
                          static_argnums=static_argnums,
                          static_argnames=static_argnames)
      return fun(*args, **kwargs)
  finally:
    _tls.fallback_depth -= 1


# --------------------------------------------------------------------------
# the guard on RematTraced

def _guarded_init(self, jaxpr, *args, **kwargs):
  caller = sys._getframe(1)
  if _is_top_level_construction(caller.f_code):
    refs = _used_input_refs(jaxpr)
    if refs:
      fun = caller.f_locals.get("f")
      stack = _stack()
      top = stack[-1] if stack else None
      if top is not None and top.pending and top.fun is fun:
        top.pending = False
        raise _UseRemat2(top, refs)
      raise RematRefError(_message(fun, jaxpr, refs))
    stack = _stack()
    if stack and stack[-1].fun is caller.f_locals.get("f"):
      stack[-1].pending = False  # its function is pure in external refs
  _UPSTREAM_INIT(self, jaxpr, *args, **kwargs)


def _is_top_level_construction(code) -> bool:
  # `_remat3` (jax 0.10.2) or its inner `decorator` (jax 0.12) builds the
  # RematTraced for the function it has just traced; every other construction
  # (differentiation, batching, DCE, checkify) derives from one of those.
  return (code.co_filename == _AC_FILE and
          code.co_name in ("_remat3", "decorator"))


_CLOSED_JAXPR = getattr(core, "ClosedJaxpr", None)  # gone in jax 0.12


def _open(jaxpr) -> core.Jaxpr:
  if _CLOSED_JAXPR is not None and isinstance(jaxpr, _CLOSED_JAXPR):
    return jaxpr.jaxpr
  return jaxpr


def _used_input_refs(jaxpr) -> list[int]:
  """Positions of ref inputs that the traced body uses at all (reads, writes,
  or passes on, e.g. as a custom_vjp residual)."""
  j = _open(jaxpr)
  used = ju.used_vars(j)
  ins = [*j.constvars, *j.invars]
  return [i for i, v in enumerate(ins)
          if isinstance(v.aval, AbstractRef) and v in used]


def _message(fun, jaxpr, refs) -> str:
  j = _open(jaxpr)
  if j.constvars:
    what = ", ".join(
        f"Ref{{{v.aval.inner_aval.str_short()}}}"
        for v in (j.constvars[i] if i < len(j.constvars)
                  else j.invars[i - len(j.constvars)] for i in refs))
    where = ""
  else:
    what = ", ".join(_errors.describe_input(j, i) for i in refs)
    where = f"; first use at {_first_use(j, j.invars[refs[0]])}"
  name = getattr(fun, "__qualname__", None) or repr(fun)
  return (
      f"jax.remat under jax_remat3: {name} uses a ref it did not create, the "
      f"{what}{where}. JAX's remat3 implementation would rematerialize from "
      "the ref's contents at backward time (wrong gradients) or fail "
      "inside JAX, and this remat3 call was not made through jax.checkpoint "
      "with jax_remat_refs installed, so it cannot be redirected to the "
      "ref-aware remat implementation. Call the function through "
      "jax.checkpoint / jax.remat (decorated after importing jax_remat_refs), "
      "or turn jax_remat3 off.")


def _first_use(j: core.Jaxpr, ref: core.Var) -> str:
  for eqn in j.eqns:
    if any(v is ref for v in eqn.invars):
      return source_info_util.summarize(eqn.source_info)
  return "unknown location"
