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


def describe_input(jaxpr: core.Jaxpr, i: int) -> str:
  """'argument y' / 'closed-over ref' / 'input #i', with the ref's type."""
  names = jaxpr.debug_info.arg_names if jaxpr.debug_info else None
  aval = jaxpr.invars[i].aval
  inner = aval.inner_aval if hasattr(aval, "inner_aval") else aval
  ty = inner.str_short()
  if names is not None and i < len(names):
    what = f"argument {names[i]}" if names[i] else "closed-over ref"
  else:
    what = f"input #{i}"
  return f"{what} of type Ref{{{ty}}}"


def _where(eqn) -> str:
  return (source_info_util.summarize(eqn.source_info) if eqn is not None
          else "unknown location")


def _fun(jaxpr: core.Jaxpr) -> str:
  return jaxpr.debug_info.func_src_info if jaxpr.debug_info else "the function"


def raise_forbidden(jaxpr: core.Jaxpr) -> None:
  i = ju.touched_ref_invars(jaxpr).index(True)
  raise RematRefError(
      f"jax.remat(ref_effects='forbid'): {_fun(jaxpr)} touches a ref it did "
      f"not create, the {describe_input(jaxpr, i)}; first access at "
      f"{_where(ju.first_access(jaxpr, jaxpr.invars[i]))}. With "
      "ref_effects='forbid' a remat-decorated function may only use refs it "
      "creates itself. Pass the value instead of the ref, or choose "
      "ref_effects='once' (effects happen in the forward pass only) or "
      "'replay' (the rematerialization repeats them).")


def raise_read_only_written(jaxpr: core.Jaxpr, i: int, kinds) -> None:
  raise RematRefError(
      f"jax.remat: {_fun(jaxpr)} writes the {describe_input(jaxpr, i)}, which "
      "was declared read-only with jax_remat_refs.read_only_ref; first write at "
      f"{_where(ju.first_access(jaxpr, jaxpr.invars[i], kinds))}. Make it with "
      "jax.new_ref instead.")


def warn_not_rematerialized(jaxpr: core.Jaxpr, eqn) -> None:
  fun, where = _fun(jaxpr), _where(eqn)
  message = (
      f"jax.remat: {fun} calls a {eqn.primitive} function that reads or "
      f"writes a ref (at {where}). A custom differentiation rule over refs "
      "has no value form that keeps the rule, so this remat is not "
      "rematerialized: it runs as if undecorated (ref effects once, its "
      "residuals saved), which gives the same results as without jax.remat. "
      "Pass the ref's value to the custom_vjp/custom_jvp function to get "
      "rematerialization back.")
  frame = source_info_util.user_frame(source_info_util.current().traceback)
  if frame is None:
    warnings.warn(message, RematRefWarning, stacklevel=2)
  else:
    warnings.warn_explicit(message, RematRefWarning, frame.file_name,
                           frame.start_line)
