"""Run a generated program with and without remat and compare the results.

Each mode the program lists (``primal``: a plain call; ``vjp``: outputs and the
forward-pass callback count after `jax.vjp`, then gradients through the vjp;
``jit_grad``: `jax.jit(jax.grad(...))`) runs on fresh refs with the same
initial contents, first without remat (the oracle), then with it.

Outcome of one program:
  * ``ok``: every mode the oracle could run agrees;
  * ``oracle_error``: the oracle raised in some mode (a JAX limitation, not
    ours); modes where it did not raise are still compared;
  * ``mismatch``: some compared value differs;
  * ``error``: the oracle ran a mode and the remat version raised.
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


def _compare_arrays(what, a, b, diffs):
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape or a.dtype != b.dtype:
    diffs.append(f"{what}: shape/dtype {a.shape} {a.dtype} (no remat) vs "
                 f"{b.shape} {b.dtype} (remat)")
    return
  if a.dtype.kind in "iub":
    ok = np.array_equal(a, b)
  else:
    ok = np.allclose(b, a, rtol=RTOL, atol=ATOL, equal_nan=True)
  if not ok:
    diffs.append(f"{what}: no remat {a.tolist()} vs remat {b.tolist()}")


def compare(mode: str, expected: dict, got: dict) -> list:
  diffs = []
  for key in expected:
    if key == "calls":
      if expected[key] != got[key]:
        diffs.append(f"{mode} forward callback count: no remat {expected[key]}"
                     f" vs remat {got[key]}")
    elif key == "refs":
      for name in expected[key]:
        _compare_arrays(f"{mode} final {name}", expected[key][name],
                        got[key][name], diffs)
    else:
      la, ta = _leaves(expected[key])
      lb, tb = _leaves(got[key])
      if ta != tb:
        diffs.append(f"{mode} {key}: structure {ta} vs {tb}")
        continue
      for i, (a, b) in enumerate(zip(la, lb)):
        _compare_arrays(f"{mode} {key}[{i}]", a, b, diffs)
  return diffs


def _short_exc(e: BaseException, limit=6) -> str:
  tb = traceback.format_exception(type(e), e, e.__traceback__)
  text = "".join(tb).rstrip().splitlines()
  return "\n".join(text[-limit:])


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
    for mode in ns["MODES"]:
      runner = ns["RUNNERS"][mode]
      try:
        expected = runner(False)
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
      diffs = compare(mode, expected, got)
      if diffs:
        if kind == "ok":
          kind = "mismatch"
        details.extend(f"[{mode}] {d}" for d in diffs)
    if kind == "ok" and oracle_failed:
      kind = "oracle_error"
    return Outcome(kind, details, compared, oracle_failed)


def check_program(program, tag: str = "fuzz") -> Outcome:
  return check_source(program.source(), tag)
