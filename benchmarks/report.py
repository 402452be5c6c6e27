"""The tables `benchmarks/run.py` prints (ratios of the variants' figures per
workload; trace time against body size) and its JSON results file."""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import numpy as np

TEMP_FLOOR = 1024  # temp bytes below this count as this: a few scalars


def ratio(a, b, floor=0):
  """a/b, each counted as at least `floor` (temp bytes: a few scalars are
  not a difference); 1.0 when both are 0; nan when either is missing (a
  program that failed) or only one is 0."""
  if a is None or b is None or a < 0 or b < 0:
    return float("nan")
  a, b = max(a, floor), max(b, floor)
  if (a == 0) != (b == 0):
    return float("nan")
  return 1.0 if a == b == 0 else a / b


def _fmt(x, width):
  """Two decimals; ratios below 0.01 in scientific notation."""
  return f"{x:{width}.1e}" if 0 < x < 0.01 else f"{x:{width}.2f}"


def preamble(sizes):
  d = jax.devices()[0]
  return (f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} "
          f"cpus, {d.platform} ({d.device_kind}); width {sizes.width}, batch "
          f"{sizes.batch}, {np.dtype(sizes.dtype).name}")


HEADER = (f"{'workload':30s} {'mem A/B':>8s} {'mem A/C':>8s} {'mem A/U':>8s} "
          f"{'res A/B':>8s} {'time A/B':>8s} {'U/B':>6s} {'compile A/B':>11s} "
          f"{'U/B':>6s} {'A-B ms':>7s} {'peak A/B':>8s}")


def ratios(rows):
  """The ratios of a workload's rows {A, B, C, U} (measure.run_workload)."""
  A, B, C, U = (rows[k] for k in "ABCU")
  return dict(mem_AB=ratio(A["temp_bytes"], B["temp_bytes"], TEMP_FLOOR),
              mem_AC=ratio(A["temp_bytes"], C["temp_bytes"], TEMP_FLOOR),
              mem_AU=ratio(A["temp_bytes"], U["temp_bytes"], TEMP_FLOOR),
              res_AB=ratio(A["residual_bytes"], B["residual_bytes"]),
              time_AB=ratio(A["step_ms"], B["step_ms"]),
              time_UB=ratio(U["step_ms"], B["step_ms"]),
              time_AU=ratio(A["step_ms"], U["step_ms"]),
              compile_AB=ratio(A["compile_s"], B["compile_s"]),
              compile_UB=ratio(U["compile_s"], B["compile_s"]),
              compile_A_minus_B_ms=(1e3 * (A["compile_s"] - B["compile_s"])
                                    if None not in (A["compile_s"], B["compile_s"])
                                    else float("nan")),
              peak_AB=ratio(A.get("peak_bytes"), B.get("peak_bytes")),
              peak_AU=ratio(A.get("peak_bytes"), U.get("peak_bytes")))


def row_line(name, r):
  """A workload's line of the table under HEADER; r: its ratios()."""
  return (f"{name:30s} {_fmt(r['mem_AB'], 8)} {_fmt(r['mem_AC'], 8)} "
          f"{_fmt(r['mem_AU'], 8)} {_fmt(r['res_AB'], 8)} "
          f"{_fmt(r['time_AB'], 8)} {_fmt(r['time_UB'], 6)} "
          f"{_fmt(r['compile_AB'], 11)} {_fmt(r['compile_UB'], 6)} "
          f"{r['compile_A_minus_B_ms']:7.0f} {_fmt(r['peak_AB'], 8)}")


SCALING_HEADER = ("trace time of jit(value_and_grad) against remat body size "
                  "(equations in the body; A refs, B pure):\n"
                  f"{'body eqns':>10s} {'A ms':>8s} {'B ms':>8s} {'A/B':>6s} "
                  f"{'A us/eqn':>9s}")


def scaling_line(a_ms, b_ms, eqns):
  return (f"{eqns:10d} {a_ms:8.1f} {b_ms:8.1f} {a_ms / b_ms:6.2f} "
          f"{1e3 * a_ms / eqns:9.1f}")


def write_json(path, sizes, results, scaling):
  """Writes the results to `path` (its folder made if missing)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  d = jax.devices()[0]
  with open(path, "w") as f:
    json.dump(dict(jax=jax.__version__, date=time.strftime("%Y-%m-%d"),
                   machine=platform.platform(), backend=d.platform,
                   device=d.device_kind, width=sizes.width,
                   batch=sizes.batch, dtype=np.dtype(sizes.dtype).name,
                   results=results, trace_scaling=scaling), f, indent=1)
