"""Greedy shrinking of a failing program.

A candidate edit is kept when the smaller program still fails the same way
(same outcome kind and, for errors, the same exception type) while its oracle
still runs. Edits: delete a statement, inline a remat block or a cond branch,
drop a remat wrapper / jit / policy / prevent_cse, shorten loops, drop
outputs, refs, block parameters and modes.
"""
from __future__ import annotations

import re
import time

from tests.fuzz import gen
from tests.fuzz import oracle


def signature(outcome: oracle.Outcome):
  """What must stay the same while shrinking."""
  if not outcome.failed:
    return None
  excs = set()
  modes = set()
  for d in outcome.details:
    m = re.match(r"\[(\w+)\] (.*)", d, re.S)
    if not m:
      continue
    if m.group(2).endswith("(accepted)"):
      continue
    exc = re.match(r"remat raised \(oracle did not\): (\w+):", m.group(2))
    if exc:
      excs.add(exc.group(1))
      modes.add(m.group(1))
    elif "oracle raised" not in m.group(2):
      modes.add(m.group(1))
  return outcome.kind, frozenset(excs), frozenset(modes)


def _edits(p: gen.Program):
  """Candidate programs, each one small edit away from `p` (lazily)."""
  # Whole-program switches first: they make every later check cheaper.
  if p.modes is None or len(p.modes) > 1:
    for mode in p.all_modes():
      q = p.copy()
      q.modes = (mode,)
      yield q
  for attr in ("jit", "jit_grad"):
    if getattr(p, attr):
      q = p.copy()
      setattr(q, attr, False)
      yield q
  for path, body in _bodies(p):
    for i in reversed(range(len(body))):
      s = body[i]
      # Delete.
      yield _with(p, path, i, [])
      # Inline (not a function called under other names: aliased, tied).
      if isinstance(s, gen.Remat) and s.call_args is None and s.calls is None:
        yield _with(p, path, i, list(s.body) + _assign(s.outs, s.rets))
      if isinstance(s, gen.Cond):
        yield _with(p, path, i, list(s.tbody) + _assign(s.outs, s.trets))
        yield _with(p, path, i, list(s.fbody) + _assign(s.outs, s.frets))
      if isinstance(s, gen.Fori) and s.trips == 1:
        yield _with(p, path, i, [gen.Line(f"{s.index} = jnp.int32(0)")]
                    + list(s.body) + _assign(s.outs, s.rets))
      if isinstance(s, gen.Scan) and s.length == 1:
        if s.xs is None:
          x = "None"
        elif s.xs.startswith("jnp.arange"):
          x = "jnp.int32(0)"
        else:
          x = f"{s.xs}[0]"
        yield _with(p, path, i, [gen.Line(f"{s.xname} = {x}")] + list(s.body)
                    + _assign(s.outs, s.rets)
                    + [gen.Line(f"{s.ys} = jnp.reshape({s.y}, (1,))")])
      # Simplify in place.
      for change in _simplifications(s):
        q = p.copy()
        change(_at(q, path)[i])
        yield q
  if len(p.outputs) > 1:
    for k in range(len(p.outputs)):
      q = p.copy()
      del q.outputs[k]
      yield q
  for k in range(len(p.refs)):
    q = p.copy()
    del q.refs[k]
    yield q
  for k, r in enumerate(p.refs):
    if r.passing == "arg":
      q = p.copy()
      q.refs[k].passing = "closure"
      yield q


def _simplifications(s):
  out = []
  if isinstance(s, gen.Remat):
    if s.enabled:
      out.append(lambda t: setattr(t, "enabled", False))
    if s.jit != "none":
      out.append(lambda t: setattr(t, "jit", "none"))
    if s.policy is not None:
      out.append(lambda t: setattr(t, "policy", None))
    if not s.prevent_cse:
      out.append(lambda t: setattr(t, "prevent_cse", True))
    for k in range(len(s.params) if s.call_args is None and s.calls is None
                   else 0):
      out.append(lambda t, k=k: t.params.pop(k))
    for k in range(len(s.outs) if s.calls is None else 0):
      def drop(t, k=k):
        t.outs.pop(k)
        t.rets.pop(k)
      out.append(drop)
  if isinstance(s, (gen.Fori, gen.Scan)) and isinstance(
      getattr(s, "trips", 1), int) and getattr(s, "trips", 1) > 1:
    out.append(lambda t: setattr(t, "trips", 1))
  if isinstance(s, gen.While) and s.trips != "1":
    out.append(lambda t: setattr(t, "trips", "1"))
  if isinstance(s, gen.Scan) and s.length > 1:
    if s.xs is None:
      out.append(lambda t: setattr(t, "length", 1))
    elif s.xs.startswith("jnp.arange"):
      def shorten(t):
        t.length = 1
        t.xs = "jnp.arange(1, dtype=jnp.int32)"
      out.append(shorten)
  if isinstance(s, gen.Cond) and s.operands:
    out.append(lambda t: setattr(t, "operands", []))
  return out


def _assign(outs, rets):
  if not outs:
    return []
  return [gen.Line(f"{gen._tup(outs)} = {gen._tup(rets)}")]


def _bodies(p):
  """(path, statement list) for every statement list, outermost first."""
  found = []

  def walk(body, path):
    found.append((path, body))
    for i, s in enumerate(body):
      for j, child in enumerate(s.children()):
        walk(child, path + ((i, j),))
  walk(p.body, ())
  return found


def _at(p, path):
  body = p.body
  for i, j in path:
    body = body[i].children()[j]
  return body


def _with(p, path, i, replacement):
  q = p.copy()
  body = _at(q, path)
  body[i:i + 1] = replacement
  return q


def _size(p):
  return len(p.source())


def minimize(program: gen.Program, outcome: oracle.Outcome | None = None,
             budget_s: float = 600.0, log=None):
  """Returns (smallest failing program found, its outcome)."""
  if outcome is None:
    outcome = oracle.check_program(program, "min")
  target = signature(outcome)
  if target is None:
    return program, outcome
  best, best_outcome = program, outcome
  deadline = time.time() + budget_s
  progress = True
  while progress and time.time() < deadline:
    progress = False
    for cand in _edits(best):
      if time.time() >= deadline:
        break
      if _size(cand) > _size(best) or cand.source() == best.source():
        continue
      try:
        got = oracle.check_program(cand, "min")
      except Exception:  # a malformed candidate; skip it
        continue
      if signature(got) == target or (
          cand.modes != best.modes and got.failed and got.kind == target[0]):
        if cand.modes != best.modes:
          target = signature(got)
        best, best_outcome = cand, got
        progress = True
        if log:
          log(f"  shrunk to {_size(best)} chars")
        break
  return best, best_outcome
