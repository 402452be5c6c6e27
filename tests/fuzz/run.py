"""Command-line fuzzer: ``python -m tests.fuzz.run --n N --seed S``.

Program k (0 <= k < N) is generated from seed S + k, so any single program
can be regenerated with ``--n 1 --seed S+k``. Each failing program's source
(a standalone reproducer) is printed, optionally shrunk with ``--minimize``
and saved with ``--save DIR``. The last line is always

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
  ap.add_argument("--minimize", action="store_true",
                  help="shrink each failing program before printing it")
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
  from tests.fuzz import gen, minimize, oracle

  counts = collections.Counter()
  oracle_reasons = collections.Counter()
  failures = []
  t0 = time.time()
  print(f"fuzz: jax {jax.__version__}, programs {args.n} from seed {args.seed}",
        flush=True)
  for k in range(args.n):
    seed = args.seed + k
    program = gen.generate(seed)
    outcome = oracle.check_program(program)
    counts[outcome.kind] += 1
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
  print(f"oracle_errors: {counts['oracle_error']}")
  print(f"programs: {args.n}, mismatches: {counts['mismatch']}, "
        f"errors: {counts['error']}", flush=True)
  return 1 if counts["mismatch"] or counts["error"] else 0


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
    with open(os.path.join(args.save, f"fuzz_seed_{seed}.py"), "w") as fh:
      fh.write(shown.source())
  sys.stdout.flush()


if __name__ == "__main__":
  sys.exit(main())
