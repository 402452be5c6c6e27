"""Run a generated program with and without remat and compare the results.

Each mode the program lists (gen's ``primal``: a plain call; ``vjp``: outputs
and the forward-pass callback count after `jax.vjp`, then gradients through
the vjp; ``jit_grad``: `jax.jit(jax.grad(...))`; gen2's modes: see
`tests.fuzz.gen2`) runs on fresh refs with the same initial contents, first
without remat (the oracle), then with it. A program's ``TOLERANCES`` may
loosen the comparison of a mode (gen2: hessians).

Outcome of one program:
  * ``ok``: every mode the oracle could run agrees;
  * ``oracle_error``: the oracle raised in some mode (a JAX limitation, not
    ours); modes where it did not raise are still compared;
  * ``mismatch``: some compared value differs;
  * ``error``: the oracle ran a mode and the remat version raised.

A program that hands one ref to a remat twice (``ALIASED = True``: passed
twice, or closed over and passed) may instead get JAX's own aliasing error
from the remat run (`is_aliasing_error`; the decided semantics, on every JAX
version): such a mode counts as accepted, not compared. Any other outcome of
the remat run (another exception, a different result) is a failure as
usual, and the aliasing error from a program without ``ALIASED`` is an
error.

The oracle of a differentiated mode must itself agree with the plain call
(outputs, final refs), and its backward / linear pass must leave the refs as
they were (``refs_before_bwd`` = ``refs_at_end``, where a mode records
them): JAX without remat was seen to break both (`_check_forward`). Where it
does, that mode counts as an oracle error, its gradients are not compared,
and the remat run's outputs and refs must equal the plain call's and its own
backward pass must leave the refs alone.
"""
from __future__ import annotations

import dataclasses
import linecache
import traceback
import warnings

import numpy as np

import jax

RTOL = 1e-5
ATOL = 1e-5


@dataclasses.dataclass
class Outcome:
  kind: str                 # "ok" | "oracle_error" | "mismatch" | "error"
  details: list             # human-readable lines
  modes_compared: int = 0
  oracle_modes_failed: int = 0
  modes_aliasing_error: int = 0   # accepted: JAX's aliasing error (ALIASED)

  @property
  def failed(self):
    return self.kind in ("mismatch", "error")


_counter = [0]


def load(source: str, tag: str = "fuzz"):
  """Executes program source as a fresh module namespace (tracebacks show it)."""
  _counter[0] += 1
  filename = f"<{tag}-{_counter[0]}>"
  linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
  ns = {"__name__": f"fuzz_program_{_counter[0]}"}
  exec(compile(source, filename, "exec"), ns)
  return ns, filename


def _leaves(tree):
  return jax.tree_util.tree_flatten(tree)


def _compare_arrays(what, a, b, diffs, tol=None):
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape or a.dtype != b.dtype:
    diffs.append(f"{what}: shape/dtype {a.shape} {a.dtype} (no remat) vs "
                 f"{b.shape} {b.dtype} (remat)")
    return
  if a.dtype.kind in "iub":
    ok = np.array_equal(a, b)
  else:
    rtol, atol = (RTOL, ATOL) if tol is None else (tol, tol)
    ok = np.allclose(b, a, rtol=rtol, atol=atol, equal_nan=True)
  if not ok:
    diffs.append(f"{what}: no remat {a.tolist()} vs remat {b.tolist()}")


def compare(mode: str, expected: dict, got: dict, tol=None) -> list:
  """Differences between two runs of a mode. Keys: ``calls`` (a count),
  ``refs`` and ``refs_*`` (ref name -> contents), anything else a pytree of
  arrays. `tol`: rtol = atol for float arrays (default RTOL, ATOL)."""
  diffs = []
  for key in expected:
    if key == "calls":
      if expected[key] != got[key]:
        diffs.append(f"{mode} forward callback count: no remat {expected[key]}"
                     f" vs remat {got[key]}")
    elif key == "refs" or key.startswith("refs_"):
      what = "final" if key == "refs" else key
      for name in expected[key]:
        _compare_arrays(f"{mode} {what} {name}", expected[key][name],
                        got[key][name], diffs, tol)
    else:
      la, ta = _leaves(expected[key])
      lb, tb = _leaves(got[key])
      if ta != tb:
        diffs.append(f"{mode} {key}: structure {ta} vs {tb}")
        continue
      for i, (a, b) in enumerate(zip(la, lb)):
        _compare_arrays(f"{mode} {key}[{i}]", a, b, diffs, tol)
  return diffs


def _short_exc(e: BaseException, limit=6) -> str:
  tb = traceback.format_exception(type(e), e, e.__traceback__)
  text = "".join(tb).rstrip().splitlines()
  return "\n".join(text[-limit:])


# JAX's error for one mutable array reaching a function at two inputs, as
# `jit` raises it (and `checkpoint` from JAX 0.11 on): the message starts with
# the first text (passed twice) or contains the second (closed over and
# passed).
ALIASING_ERROR_START = ("only one reference to a mutable array may be passed "
                        "as an argument to a function")
ALIASING_ERROR_CLOSED = "was both closed over and passed as the argument"


def is_aliasing_error(e: BaseException) -> bool:
  msg = str(e)
  return isinstance(e, ValueError) and (
      msg.startswith(ALIASING_ERROR_START) or ALIASING_ERROR_CLOSED in msg)


class OracleInconsistent(Exception):
  """JAX without remat disagrees with itself (a JAX bug, not ours)."""


def _check_forward(mode: str, plain: dict, expected: dict) -> None:
  """The forward pass of a differentiated run does what the plain call does:
  same final refs (and outputs, where the mode returns them). Seen to fail
  in JAX itself, without remat: `jax.linearize` / `jax.vjp` of a
  `fori_loop` whose body creates and swaps a ref (seed 4918, both versions)
  leaves a wrong value in an external ref."""
  shown = {k: plain[k] for k in ("out", "refs") if k in expected}
  diffs = compare(mode, shown, {k: expected[k] for k in shown})
  if diffs:
    raise OracleInconsistent("no-remat differentiated run differs from the "
                             "no-remat plain call: " + "; ".join(diffs))
  diffs = _backward_wrote(mode, expected)
  if diffs:
    raise OracleInconsistent("the no-remat backward / linear pass wrote refs "
                             "(JAX: linearize of a while loop replays its "
                             "effects): " + "; ".join(diffs))


def _backward_wrote(mode: str, run: dict) -> list:
  """A backward or linear pass (run after ``refs_before_bwd`` was taken,
  ending at ``refs_at_end``) has no effect on the program's refs."""
  if "refs_before_bwd" not in run or "refs_at_end" not in run:
    return []
  return compare(mode, {"refs": run["refs_before_bwd"]},
                 {"refs": run["refs_at_end"]})


def check_source(source: str, tag: str = "fuzz") -> Outcome:
  """Runs every mode of one program's source; see the module docstring."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      ns, _ = load(source, tag)
    except Exception as e:  # generator bug: should not happen
      return Outcome("error", [f"program does not load: {_short_exc(e)}"])
    details = []
    compared = oracle_failed = aliasing = 0
    kind = "ok"
    aliased = bool(ns.get("ALIASED", False))
    plain = None  # the program's plain call without remat, run once
    for mode in ns["MODES"]:
      runner = ns["RUNNERS"][mode]
      try:
        expected = runner(False)
        if mode != "primal":
          if plain is None:
            plain = ns["RUNNERS"]["primal"](False)
          _check_forward(mode, plain, expected)
      except OracleInconsistent as e:
        # Gradients have no trustworthy oracle here; the forward pass still
        # must do what the plain call does.
        oracle_failed += 1
        details.append(f"[{mode}] oracle raised OracleInconsistent: {e}")
        try:
          got = runner(True)
          shown = {k: plain[k] for k in ("out", "refs") if k in got}
          diffs = (compare(mode, shown, {k: got[k] for k in shown})
                   + _backward_wrote(mode, got))
        except Exception as e2:
          if aliased and is_aliasing_error(e2):
            aliasing += 1
            details.append(f"[{mode}] remat raised JAX's aliasing error "
                           "(accepted)")
            continue
          diffs = [f"remat raised {type(e2).__name__}: {str(e2)[:200]}"]
        if diffs:
          kind = "mismatch"
          details.extend(f"[{mode}] against the plain call: {d}" for d in diffs)
        continue
      except Exception as e:
        oracle_failed += 1
        details.append(f"[{mode}] oracle raised {type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''}")
        continue
      try:
        got = runner(True)
      except Exception as e:
        if aliased and is_aliasing_error(e):
          aliasing += 1
          details.append(f"[{mode}] remat raised JAX's aliasing error "
                         "(accepted)")
          continue
        kind = "error"
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        details.append(f"[{mode}] remat raised (oracle did not): "
                       f"{type(e).__name__}: {msg}\n{_short_exc(e)}")
        continue
      compared += 1
      diffs = compare(mode, expected, got, ns.get("TOLERANCES", {}).get(mode))
      if diffs:
        if kind == "ok":
          kind = "mismatch"
        details.extend(f"[{mode}] {d}" for d in diffs)
    if kind == "ok" and oracle_failed:
      kind = "oracle_error"
    return Outcome(kind, details, compared, oracle_failed, aliasing)


def check_program(program, tag: str = "fuzz") -> Outcome:
  return check_source(program.source(), tag)
