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

The oracle of a differentiated mode must itself agree with the plain call
(outputs, final refs): JAX without remat was seen not to (`_check_forward`).
Where it does not, that mode counts as an oracle error, its gradients are
not compared, and the remat run's outputs and refs must equal the plain
call's.
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


def check_source(source: str, tag: str = "fuzz") -> Outcome:
  """Runs every mode of one program's source; see the module docstring."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      ns, _ = load(source, tag)
    except Exception as e:  # generator bug: should not happen
      return Outcome("error", [f"program does not load: {_short_exc(e)}"])
    details = []
    compared = oracle_failed = 0
    kind = "ok"
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
          diffs = compare(mode, shown, {k: got[k] for k in shown})
        except Exception as e2:
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
    return Outcome(kind, details, compared, oracle_failed)


def check_program(program, tag: str = "fuzz") -> Outcome:
  return check_source(program.source(), tag)
