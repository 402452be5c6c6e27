"""Command-line fuzzer: ``python -m tests.fuzz.run --n N --seed S [--gen 1|2]``.

Program k (0 <= k < N) is generated from seed S + k by generator ``--gen``
(1: `tests.fuzz.gen`, statements over many values, modes primal / vjp /
jit_grad; 2: `tests.fuzz.gen2`, one state vector through blocks, modes
value_and_grad / vjp with a write before the backward pass / linearize /
jvp / hessian), so any single program can be regenerated with
``--n 1 --seed S+k --gen G``. Each failing program's source
(a standalone reproducer) is printed, optionally shrunk with ``--minimize``
(generator 1 only) and saved with ``--save DIR``. Before the totals, a
``features:`` line gives the share of programs carrying each feature tag of
`tests.fuzz.ref_api.FEATURES` (ref kinds, ``with_refs``, aliased refs, tied
weights, while loops, ...), and the number of modes where an aliased
program's remat run raised JAX's aliasing error (accepted). The last line is
always

    programs: N, mismatches: M, errors: E

and the exit code is nonzero when M or E is.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--n", type=int, default=100, help="number of programs")
  ap.add_argument("--seed", type=int, default=0, help="seed of the first program")
  ap.add_argument("--gen", type=int, choices=(1, 2), default=1,
                  help="which generator: 1 (tests.fuzz.gen, default) or 2 "
                  "(tests.fuzz.gen2)")
  ap.add_argument("--minimize", action="store_true",
                  help="shrink each failing program before printing it "
                  "(generator 1 only; generator 2 prints its programs as they are)")
  ap.add_argument("--minimize-budget", type=float, default=300.0,
                  help="seconds per program for --minimize")
  ap.add_argument("--save", metavar="DIR",
                  help="write each failing program's reproducer into DIR")
  ap.add_argument("--progress", type=int, default=100,
                  help="print a progress line every this many programs (0: never)")
  ap.add_argument("--quiet", action="store_true",
                  help="print failures as one line each, without the source")
  args = ap.parse_args(argv)

  # XLA's C++ error log repeats every compile failure; the report has them.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # noqa: F401  (after argument parsing: --help stays fast)
  from tests.fuzz import gen, gen2, minimize, oracle
  if args.minimize and args.gen != 1:
    ap.error("--minimize works with --gen 1 only")
  generate = gen2.generate if args.gen == 2 else gen.generate

  counts = collections.Counter()
  oracle_reasons = collections.Counter()
  failures = []
  t0 = time.time()
  print(f"fuzz: jax {jax.__version__}, generator {args.gen}, programs {args.n} "
        f"from seed {args.seed}", flush=True)
  by_mode = collections.defaultdict(collections.Counter)
  features = collections.Counter()
  aliasing_errors = 0
  for k in range(args.n):
    seed = args.seed + k
    program = generate(seed)
    features.update(program.features)
    outcome = oracle.check_program(program)
    counts[outcome.kind] += 1
    aliasing_errors += outcome.modes_aliasing_error
    _count_modes(by_mode, program, outcome)
    for d in outcome.details:
      if "oracle raised" in d:
        oracle_reasons[d.split(": ", 1)[0].split("] ")[-1]] += 1
    if outcome.failed:
      failures.append(seed)
      _report(args, seed, program, outcome, minimize, gen)
    if args.progress and (k + 1) % args.progress == 0:
      print(f"... {k + 1}/{args.n} programs, {time.time() - t0:.0f}s, "
            f"mismatches {counts['mismatch']}, errors {counts['error']}, "
            f"oracle_errors {counts['oracle_error']}", flush=True)
    if (k + 1) % 250 == 0:
      jax.clear_caches()  # bound memory over long runs

  elapsed = time.time() - t0
  print(f"time: {elapsed:.1f}s ({elapsed / max(args.n, 1):.2f}s per program)")
  if failures:
    print(f"failing seeds: {failures}")
  if oracle_reasons:
    print("oracle errors by kind: " + ", ".join(
        f"{k} x{v}" for k, v in oracle_reasons.most_common()))
  if by_mode:
    print("by mode (compared / mismatch / error / oracle error): " + ", ".join(
        f"{m} {c['compared']}/{c['mismatch']}/{c['error']}/{c['oracle']}"
        for m, c in sorted(by_mode.items())))
  print(_features_line(features, args.n))
  print(f"aliasing errors accepted (modes): {aliasing_errors}")
  print(f"oracle_errors: {counts['oracle_error']}")
  print(f"programs: {args.n}, mismatches: {counts['mismatch']}, "
        f"errors: {counts['error']}", flush=True)
  return 1 if counts["mismatch"] or counts["error"] else 0


def _features_line(features, n):
  """``features: kind 27%, with_refs 12%, ...``: share of programs with each
  tag, in `ref_api.FEATURES` order (every tag, 0% too)."""
  from tests.fuzz import ref_api
  share = lambda t: f"{t} {100 * features[t] / max(n, 1):.0f}%"
  return "features: " + ", ".join(share(t) for t in ref_api.FEATURES)


def _count_modes(by_mode, program, outcome):
  """Per-mode tallies, from the ``[mode] ...`` detail lines."""
  modes = program.modes if program.modes is not None else program.all_modes()
  bad = collections.defaultdict(set)
  for d in outcome.details:
    if d.startswith("["):
      mode, rest = d[1:].split("] ", 1)
      if rest.endswith("(accepted)"):
        continue
      if "oracle raised" in rest:
        bad[mode].add("oracle")
      elif rest.startswith("remat raised"):
        bad[mode].add("error")
      else:
        bad[mode].add("mismatch")
  for mode in modes:
    c = by_mode[mode]
    if "oracle" in bad[mode]:
      c["oracle"] += 1
      if "mismatch" in bad[mode]:   # against the plain call
        c["mismatch"] += 1
      continue
    c["compared"] += 1
    for k in ("mismatch", "error"):
      c[k] += k in bad[mode]


def _report(args, seed, program, outcome, minimize, gen):
  head = f"FAIL seed {seed}: {outcome.kind}"
  if args.quiet:
    print(head + ": " + (outcome.details[0].splitlines()[0] if outcome.details else ""),
          flush=True)
  else:
    print("=" * 72)
    print(head)
    print("\n".join(outcome.details))
  shown = program
  if args.minimize:
    shown, small = minimize.minimize(program, outcome, budget_s=args.minimize_budget)
    if not args.quiet:
      print(f"-- minimized ({small.kind}):")
      print("\n".join(small.details))
  if not args.quiet:
    print("-- reproducer:")
    print(shown.source())
  if args.save:
    os.makedirs(args.save, exist_ok=True)
    prefix = "fuzz" if args.gen == 1 else "fuzz2"
    with open(os.path.join(args.save, f"{prefix}_seed_{seed}.py"), "w") as fh:
      fh.write(shown.source())
  sys.stdout.flush()


if __name__ == "__main__":
  sys.exit(main())
