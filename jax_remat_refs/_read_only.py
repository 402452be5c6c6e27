"""Refs declared read-only: rematerialized from the live ref, zero copies.

A ref made by `read_only_ref` (a `new_ref` with `kind=READ_ONLY_KIND`) is one
the user promises not to write between a remat's forward pass and its
rematerialization (parameters read during the loss, say). A "once" remat
neither snapshots it nor saves its reads: the rematerialization reads the
ref itself, as if the remat were not there.

The promise is checked, never trusted:
* a remat body that writes such a ref raises `RematRefError` at trace time;
* a write anywhere else between the two passes is caught at run time: the
  forward pass saves a 64-bit position-mixed checksum (two uint32 scalars) of
  each value it reads from the ref, and the rematerialization recomputes it
  from what it reads and raises
  `RematRefError` (through a `jax.debug.callback`) on a mismatch. So the
  check costs what the reads cost, and it guards exactly the values the
  gradient depends on.

A read-only ref that the body hands on to nested control flow (a loop, a
cond, an inner jit) is treated like any other ref (snapshotted or its reads
saved): correct whatever happens to it, at the usual cost.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax
from jax._src import core
from jax._src import linear_util as lu
from jax._src.interpreters import partial_eval as pe
from jax._src.state import primitives as state_primitives

from jax_remat_refs import _errors
from jax_remat_refs import _rewrite

READ_ONLY_KIND = "jax_remat_refs.read_only"


def read_only_ref(init_val, *, memory_space=None):
  """`jax.new_ref(init_val)`, declared not to be written between a remat's
  forward pass and its rematerialization (checked; see module docstring)."""
  return core.new_ref(init_val, memory_space=memory_space, kind=READ_ONLY_KIND)


def is_read_only(aval) -> bool:
  return getattr(aval, "kind", None) == READ_ONLY_KIND and supported(aval)


def supported(aval) -> bool:
  """Whether the checksum handles the ref's dtype (else it is snapshotted)."""
  dt = np.dtype(aval.inner_aval.dtype) if _is_numpy_dtype(aval) else None
  return (dt is not None and dt.itemsize in (1, 2, 4, 8) and
          core.is_constant_shape(aval.inner_aval.shape))


def _is_numpy_dtype(aval) -> bool:
  try:
    np.dtype(aval.inner_aval.dtype)
    return True
  except TypeError:
    return False


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}


@jax.jit
def checksum(x):
  """Two uint32 position-mixed sums of the bits of `x` (wrapping).

  Built so that XLA keeps it to one fused pass over `x`, also inside loops:
  its own `jit` keeps it one equation that depends on `x` (a loop's partial
  evaluation would otherwise hoist the loop-invariant positions out of the
  body as arrays); the positions are offset by the first element, so no
  full-size array of them is loop-invariant either (XLA would hoist and
  materialize it); and both sums are one reduction with two outputs."""
  dt = np.dtype(x.dtype)
  if x.size == 0:
    return jax.numpy.zeros(2, np.uint32)
  if dt == np.bool_:
    bits = x.astype(np.uint32)
  else:
    bits = lax.bitcast_convert_type(x, _UINT[dt.itemsize]).astype(np.uint32)
  # 8-byte elements are two uint32 words each: one more (trailing) axis.
  cols = bits.shape[-1] if bits.ndim else 1
  bits = bits.reshape(bits.size // cols, cols)
  salt = bits[0, 0] | np.uint32(1)
  row_start = lax.iota(np.uint32, bits.shape[0]) * np.uint32(cols) + salt
  pos = row_start[:, None] + lax.iota(np.uint32, cols)[None, :]
  weighted = bits * (pos * np.uint32(2654435761))
  mixed = (bits ^ (pos * np.uint32(0x9E3779B9))) * np.uint32(0x85EBCA6B)
  mixed = mixed ^ (mixed >> np.uint32(13))
  h1, h2 = lax.reduce((weighted, mixed), (np.uint32(0), np.uint32(0)),
                      lambda a, b: (a[0] + b[0], a[1] + b[1]), (0, 1))
  return jax.numpy.stack([h1, h2])


CHECKSUM_AVAL = core.ShapedArray((2,), np.dtype(np.uint32))


def _verify(label, saved, now):
  if not np.array_equal(np.asarray(saved), np.asarray(now)):
    raise _errors.RematRefError(
        f"jax.remat: the {label} was declared read-only "
        "(jax_remat_refs.read_only_ref) but its contents changed between the "
        "forward pass and the rematerialization, so the recomputation would "
        "read different values than the forward pass did. Create it with "
        "jax.new_ref instead, or stop writing it while a remat that reads it "
        "awaits its backward pass.")


def _trace(fun, avals) -> core.Jaxpr:
  wrapped = lu.wrap_init(fun, debug_info=_debug_info(fun, len(avals)))
  jaxpr, _, consts = pe.trace_to_jaxpr_dynamic(wrapped, list(avals))
  assert not consts and not jaxpr.constvars, "checksum snippet has consts"
  return jaxpr


def _debug_info(fun, n):
  from jax._src import api_util
  return api_util.debug_info("jax_remat_refs read-only check", fun,
                             (0,) * n, {})


def checksum_jaxpr(aval) -> core.Jaxpr:
  """A fresh jaxpr: value -> its checksum."""
  def entry(x):
    return [checksum(x)]
  return _trace(entry, [aval])


def verify_jaxpr(aval, label: str) -> core.Jaxpr:
  """A fresh jaxpr: (saved checksum, value) -> (), raising on a mismatch."""
  def verify(saved, x):
    now = checksum(x)
    # The host callback runs only on a mismatch: checking costs a checksum,
    # not a device-to-host round trip per rematerialization.
    lax.cond(jax.numpy.any(saved != now),
             lambda: jax.debug.callback(functools.partial(_verify, label),
                                        saved, now),
             lambda: None)
    return []
  return _trace(verify, [CHECKSUM_AVAL, aval])


def checked_reads(jaxpr: core.Jaxpr, ref: core.Var):
  """The outputs of `ref`'s reads if the body only reads it, at top level
  (each read is then checked on its own, at the cost of the read); else
  None."""
  reads = []
  for eqn in jaxpr.eqns:
    if not any(v is ref for v in eqn.invars):
      continue
    if (eqn.primitive is not state_primitives.get_p or eqn.invars[0] is not ref
        or any(v is ref for v in eqn.invars[1:])):
      return None
    reads.append(eqn.outvars[0])
  if any(v is ref for v in jaxpr.outvars):
    return None
  return tuple(reads)


def check_not_written(jaxpr: core.Jaxpr, labels) -> None:
  """Trace-time check: the body does not write its read-only ref inputs."""
  written = _rewrite.writes(jaxpr)
  for i, ref in enumerate(jaxpr.invars):
    if ref in written and is_read_only(ref.aval):
      label = labels(i)
      where = _errors.first_effect(jaxpr, ref, _rewrite.WRITE_KINDS)
      raise _errors.RematRefError(
          f"jax.remat: the {label} was declared read-only "
          f"(jax_remat_refs.read_only_ref) but the remat-decorated function "
          f"writes it (first write at {where}). Create it with jax.new_ref "
          "instead.")

