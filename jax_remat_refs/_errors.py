"""Errors and warnings of jax_remat_refs, with messages that name remat and
the ref."""
from __future__ import annotations

import warnings

from jax._src import core
from jax._src import source_info_util

from jax_remat_refs import _jaxpr_util as ju


class RematRefError(Exception):
  """A remat-decorated function used a ref in a way that is not supported."""


class RematRefWarning(UserWarning):
  """A remat-decorated function is run without rematerialization."""


def _where(eqn) -> str:
  return (source_info_util.summarize(eqn.source_info) if eqn is not None
          else "unknown location")


def _fun(jaxpr: core.Jaxpr) -> str:
  return jaxpr.debug_info.func_src_info if jaxpr.debug_info else "the function"


def raise_forbidden(jaxpr: core.Jaxpr, i: int) -> None:
  raise RematRefError(
      f"jax.remat(ref_effects='forbid'): {_fun(jaxpr)} touches a ref it did "
      f"not create, the {ju.describe_input(jaxpr, i)}; first access at "
      f"{_where(ju.first_access(jaxpr, jaxpr.invars[i]))}. With "
      "ref_effects='forbid' a remat-decorated function may only use refs it "
      "creates itself, or refs made with kind='no_grad_no_remat' (whose "
      "effects are forward-only by declaration). Pass the value instead of "
      "the ref, or choose "
      "ref_effects='once' (effects happen in the forward pass only) or "
      "'replay' (the rematerialization repeats them).")


def raise_aliased(jaxpr: core.Jaxpr, first: int, again: int) -> None:
  """JAX's own error for a ref passed to a function twice (the words `jit`,
  and from JAX 0.11 `checkpoint`, use)."""
  names = jaxpr.debug_info.arg_names if jaxpr.debug_info else None
  name = lambda i: (names[i] if names is not None and i < len(names)
                    else "unknown")
  ty = jaxpr.invars[again].aval.str_short()
  fun = _fun(jaxpr)
  if not name(first) or not name(again):  # one of them is closed over
    raise ValueError(
        f"when tracing {fun} for checkpoint / remat, a mutable array "
        f"reference of type {ty} was both closed over and passed as the "
        f"argument {name(first) or name(again)}")
  raise ValueError(
      "only one reference to a mutable array may be passed as an argument to "
      f"a function, but when tracing {fun} for checkpoint / remat the mutable "
      f"array reference of type {ty} appeared at both {name(first)} and "
      f"{name(again)}.")


def raise_frozen_input(jaxpr: core.Jaxpr, eqn) -> None:
  i = jaxpr.invars.index(eqn.invars[0])
  raise RematRefError(
      f"jax.remat: {_fun(jaxpr)} freezes the {ju.describe_input(jaxpr, i)}, a "
      f"ref it did not create, at {_where(eqn)}. A remat body (like a jit "
      "body) may freeze only refs it makes; read the value with r[...] "
      "instead.")


def raise_aliased_nested(jaxpr: core.Jaxpr, eqn) -> None:
  raise RematRefError(
      f"jax.remat: one ref reaches {_fun(jaxpr)} at two inputs (allowed here "
      "because jax_mutable_array_checks is off) and the body passes it on "
      f"under both names to a {eqn.primitive} call at {_where(eqn)}, which "
      "would see two refs and lose the writes made through one of them. "
      "Pass the ref once.")


def warn_not_rematerialized(jaxpr: core.Jaxpr, eqn) -> None:
  fun, where = _fun(jaxpr), _where(eqn)
  message = (
      f"jax.remat: {fun} calls a {eqn.primitive} function that takes or "
      f"makes refs (at {where}). A custom differentiation rule over refs "
      "has no value form that keeps the rule, so this remat is not "
      "rematerialized: it runs as if undecorated (ref effects once, its "
      "residuals saved), which gives the same results as without jax.remat. "
      "Pass the custom_vjp/custom_jvp function values instead of refs, or "
      "give it no refs of its own, to get rematerialization back.")
  frame = source_info_util.user_frame(source_info_util.current().traceback)
  if frame is None:
    warnings.warn(message, RematRefWarning, stacklevel=2)
  else:
    warnings.warn_explicit(message, RematRefWarning, frame.file_name,
                           frame.start_line)
