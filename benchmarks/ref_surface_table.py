"""The ref-surface table: each ref feature of JAX's public API in a small
program, run three ways, printed as a markdown table.

  no remat        the program without remat, on JAX as installed (the
                  package deactivated); where activating the package changes
                  even this (its fix of the `addupdate` JVP rule for
                  "no_grad_no_remat" refs), the cell says so
  upstream remat  the program with `jax.remat`, the package deactivated
  package remat   the program with `jax.remat`, the package active

A remat cell reads "= no remat" when it gives the values of the program
without remat under the same activation (rtol 1e-5, atol 1e-6), "same
error" when both raise the same error; otherwise it shows what it gives
(wrong values are marked "wrong") or raises, with where the exception came
from (the innermost frame's owner: JAX, Flax, the package; for JAX, also
the innermost Flax or package frame that called into it).

Each way runs in a process of its own (no jit cache or rule is shared):

  python benchmarks/ref_surface_table.py                   # the table
  python benchmarks/ref_surface_table.py --enable-checks   # jax_enable_checks on
  python benchmarks/ref_surface_table.py --json out.json   # also the raw results

The programs are those of tests/test_ref_surface.py, made to print rather
than assert.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback

import numpy as np

MODES = ("none", "none_package", "upstream", "package")
RTOL, ATOL = 1e-5, 1e-6


# -- the programs (run in the child) ------------------------------------------

def programs():
  """[(feature, program name, prog)], prog(rm) -> {name: value}."""
  import inspect
  import jax
  from jax import lax
  import jax.numpy as jnp

  R = jax.ref
  sg = lax.stop_gradient
  ms_enum = jax.memory.Space
  new_ref_params = inspect.signature(jax.new_ref).parameters
  rows = []

  def row(feature, name):
    def deco(prog):
      rows.append((feature, name, prog))
      return prog
    return deco

  def rw(x, r):
    out = jnp.sum(x * r[...])
    r[...] = r[...] + 1.
    return out

  # kind="no_grad_no_remat"
  if "kind" in new_ref_params:
    @row('kind="no_grad_no_remat"', "read, then set; grad, then jit(grad)")
    def _(rm):
      k = jax.new_ref(1., kind="no_grad_no_remat")
      def f(x):
        out = x * k[...]
        k[...] = k[...] + sg(x)
        return out
      return dict(grad=jax.grad(rm(f))(3.), jit_grad=jax.jit(jax.grad(rm(f)))(3.),
                  k=k[...])

    @row('kind="no_grad_no_remat"', "`jax.ref.addupdate` under grad")
    def _(rm):
      k = jax.new_ref(jnp.float32(1.), kind="no_grad_no_remat")
      def f(x):
        R.addupdate(k, (), sg(x))
        return x * R.get(k)
      return dict(grad=jax.grad(rm(f))(jnp.float32(2.)), k=k[...])

  # with_refs
  @row("`vjp(...)[1].with_refs`", "f writes a closed-over ref; 2 backward passes")
  def _(rm):
    s = jax.new_ref(jnp.float32(1.))
    def f(x):
      o = x * s[...]
      s[...] += 1.
      return o * x
    gx = jax.new_ref(jnp.float32(0.))
    out, f_vjp = jax.vjp(rm(f), jnp.float32(3.))
    f_vjp.with_refs(gx)(jnp.float32(1.))
    f_vjp.with_refs(gx)(jnp.float32(1.))
    return dict(out=out, gx=gx[...], s=s[...])

  if hasattr(jax, "ad") and hasattr(jax.ad, "DontWant"):
    @row("`vjp(...)[1].with_refs`", "`GradValue()` / `DontWant()` markers")
    def _(rm):
      state = jax.new_ref(jnp.float32(2.))
      def f(x, y):
        out = jnp.sin(x) * y * state[...]
        state[...] = state[...] * 3.
        return out
      gx = jax.new_ref(jnp.float32(0.))
      _, f_vjp = jax.vjp(rm(f), jnp.float32(0.5), jnp.float32(2.))
      f_vjp.with_refs(gx, jax.ad.DontWant())(jnp.float32(1.))
      gy, _ = f_vjp.with_refs(jax.ad.GradValue(), gx)(jnp.float32(1.))
      return dict(gx=gx[...], gy=gy, state=state[...])

  if "kind" in new_ref_params:
    @row("`vjp(...)[1].with_refs`", 'a "no_grad_no_remat" ref set and addupdated')
    def _(rm):
      k = jax.new_ref(jnp.float32(1.), kind="no_grad_no_remat")
      acc = jax.new_ref(jnp.float32(1.), kind="no_grad_no_remat")
      def f(x):
        o = x * k[...]
        k[...] = k[...] + sg(x)
        R.addupdate(acc, (), sg(x) * 2.)
        return o * x + acc[...]
      gx = jax.new_ref(jnp.float32(0.))
      out, f_vjp = jax.vjp(rm(f), jnp.float32(3.))
      f_vjp.with_refs(gx)(jnp.float32(1.))
      f_vjp.with_refs(gx)(jnp.float32(1.))
      return dict(out=out, gx=gx[...], k=k[...], acc=acc[...])

  # functional forms
  def forms_body(x, r):
    a = R.get(r, 1)
    old = R.swap(r, 0, sg(x * a))
    R.set(r, 1, sg(old + x))
    t = jax.new_ref(x * 2.)
    R.addupdate(t, (), x * a)
    return jnp.sum(R.get(r, None) * x) + R.freeze(t) * old

  @row("`jax.ref.get/set/swap/addupdate/freeze`", "value_and_grad; addupdate and freeze on a ref made inside")
  def _(rm):
    r = jax.new_ref(jnp.array([1., 2., 3.], jnp.float32))
    v, g = jax.value_and_grad(rm(forms_body))(jnp.float32(0.7), r)
    return dict(value=v, grad=g, r=r[...])

  @row("`jax.ref.get/set/swap/addupdate/freeze`", "the same under jit, ref closed over")
  def _(rm):
    r = jax.new_ref(jnp.array([1., 2., 3.], jnp.float32))
    v, g = jax.jit(jax.value_and_grad(rm(lambda x: forms_body(x, r))))(
        jnp.float32(0.7))
    return dict(value=v, grad=g, r=r[...])

  @row("`jax.ref.get/set/swap/addupdate/freeze`", "vmap(grad), batched ref")
  def _(rm):
    def f(x, r):
      a = R.get(r, 0)
      old = R.swap(r, 1, sg(x) + a)
      R.set(r, 0, sg(old * 2.))
      return jnp.sin(x) * old
    r = jax.new_ref(jnp.array([[1., 2.], [3., 4.]], jnp.float32))
    g = jax.vmap(jax.grad(rm(f)))(jnp.array([0.3, 0.4], jnp.float32), r)
    return dict(grad=g, r=r[...])

  @row("`jax.ref.get/set/swap/addupdate/freeze`", "addupdate into an undifferentiated ref under grad")
  def _(rm):
    r = jax.new_ref(jnp.float32(1.))
    def f(x, r):
      R.addupdate(r, (), sg(x))
      return x * r[...]
    return dict(grad=jax.grad(rm(f))(jnp.float32(2.), r), r=r[...])

  @row("`jax.ref.get/set/swap/addupdate/freeze`", "freeze of a closed-over ref, no AD")
  def _(rm):
    r = jax.new_ref(jnp.float32(3.))
    return dict(out=rm(lambda x: x * R.freeze(r))(jnp.float32(2.)))

  # memory_space
  def outside_jit(ms):
    def prog(rm):
      r = jax.new_ref(jnp.arange(3., dtype=jnp.float32), memory_space=ms)
      g = jax.grad(rm(rw))(jnp.float32(2.), r)
      g2 = jax.jit(jax.grad(rm(rw)))(jnp.float32(2.), r)
      return dict(grad=g, jit_grad=g2, r=r[...])
    return prog

  def in_jit(ms):
    def prog(rm):
      @jax.jit
      def step(x):
        r = jax.new_ref(jnp.arange(3., dtype=jnp.float32), memory_space=ms)
        g = jax.grad(lambda x: rm(rw)(x, r))(x)
        return g, r[...]
      g, r = step(jnp.float32(2.))
      return dict(grad=g, r=r)
    return prog

  def in_differentiated(ms):
    def prog(rm):
      def f(x):
        r = jax.new_ref(jnp.arange(3., dtype=jnp.float32), memory_space=ms)
        y = rm(lambda x, r: x * r[...] * 1.)(x, r)
        return jnp.sum(y) + jnp.sum(r[...])
      v, g = jax.jit(jax.value_and_grad(f))(jnp.float32(2.))
      return dict(value=v, grad=g)
    return prog

  def eager_body(**new_ref_kwargs):
    def prog(rm):
      def g(x):
        r = jax.new_ref(jnp.zeros(3, jnp.float32), **new_ref_kwargs)
        r[...] = x * 2.
        return jnp.sum(r[...])
      return dict(out=rm(g)(jnp.ones(3, jnp.float32)))
    return prog

  ms_feature = "`new_ref(memory_space=)`"
  row(ms_feature, "Host, made outside jit; grad, jit(grad)")(outside_jit(ms_enum.Host))
  row(ms_feature, "Host, made in jit outside grad")(in_jit(ms_enum.Host))
  row(ms_feature, "Any, made in jit outside grad")(in_jit(ms_enum.Any))
  row(ms_feature, '"pinned_host", made in jit outside grad')(in_jit("pinned_host"))
  row(ms_feature, "Host, made in the differentiated function (jit)")(
      in_differentiated(ms_enum.Host))
  row(ms_feature, "Any, made in an eagerly called body")(eager_body(memory_space=ms_enum.Any))

  # pin
  if "pin" in new_ref_params:
    @row("`new_ref(pin=True)`", "written, then read by a remat'd function; value_and_grad in jit")
    def _(rm):
      @jax.jit
      def step(x):
        r = jax.new_ref(jnp.zeros(3, jnp.float32), pin=True)
        r[...] = jnp.arange(3., dtype=jnp.float32)
        v, g = jax.value_and_grad(lambda x: rm(rw)(x, r))(x)
        return v, g, r[...]
      v, g, r = step(jnp.float32(2.))
      return dict(value=v, grad=g, r=r)

    row("`new_ref(pin=True)`", "made in an eagerly called body")(eager_body(pin=True))

  # donate
  @row("`jit(..., donate_argnums=)`", "ref passed, counter closed over, x donated; 2 steps")
  def _(rm):
    w = jax.new_ref(jnp.array([1., 2., 3.], jnp.float32))
    calls = jax.new_ref(jnp.int32(0))
    def block(x, w):
      y = jnp.sin(x * w[...])
      w[...] = w[...] * 0.5
      calls[...] += 1
      return y
    def step(x, b, w):
      v, g = jax.value_and_grad(lambda x: jnp.sum(rm(block)(x, w) * b))(x)
      return v, x - 0.1 * g
    step = jax.jit(step, donate_argnums=(0,))
    x = jnp.array([0.1, 0.2, 0.3], jnp.float32)
    b = jnp.array([1., -1., 2.], jnp.float32)
    losses, donated = [], []
    for i in range(2):
      x_in = x
      v, x = step(x_in, b + i, w)
      donated.append(x_in.is_deleted())
      losses.append(v)
    return dict(losses=losses, x=x, w=w[...], calls=calls[...],
                donated=all(donated))

  @row("`jit(..., donate_argnums=)`", "two args donated, a written ref of their shape passed")
  def _(rm):
    w = jax.new_ref(jnp.ones(3, jnp.float32))
    def step(x, b, w):
      def body(x, w):
        w[...] = w[...] * 0.5
        return jnp.sum(x * b)
      return rm(body)(x, w), x * 2.
    v, x = jax.jit(step, donate_argnums=(0, 1))(
        jnp.ones(3, jnp.float32), jnp.ones(3, jnp.float32), w)
    return dict(value=v, x=x, w=w[...])

  # Flax
  try:
    from flax import nnx
  except ImportError:
    nnx = None
  if nnx is not None:
    rows.extend(flax_programs(jax, jnp, nnx))

  # aliasing
  def two_refs(x, a, b):
    out = x * a[...]
    b[...] += 1.
    return out * b[...]

  @row("aliased refs", "one ref passed twice; grad")
  def _(rm):
    r = jax.new_ref(jnp.float32(2.))
    return dict(grad=jax.grad(rm(two_refs))(jnp.float32(3.), r, r), r=r[...])

  @row("aliased refs", "closed over and passed; grad")
  def _(rm):
    r = jax.new_ref(jnp.float32(2.))
    g = jax.grad(rm(lambda x, a: two_refs(x, a, r)))(jnp.float32(3.), r)
    return dict(grad=g, r=r[...])

  return rows


def flax_programs(jax, jnp, nnx):
  x0 = np.arange(12., dtype=np.float32).reshape(4, 3) / 7.
  x1 = x0[::-1] * 0.5 - 0.25

  class Block(nnx.Module):
    def __init__(self, din, dout, rngs):
      self.linear = nnx.Linear(din, dout, rngs=rngs)
      self.bn = nnx.BatchNorm(dout, momentum=0.5, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.drop(jnp.tanh(self.bn(self.linear(x))))

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.b1 = Block(3, 4, rngs)
      self.b2 = Block(4, 2, rngs)

  def make(ref_params, **var_defaults):
    with nnx.var_defaults(**var_defaults):
      model = Model(nnx.Rngs(0))
    if not ref_params:
      model = nnx.with_vars(model, ref=False, only=nnx.Param)
    return model

  def retrace(module):  # Flax 0.12.8's BatchNorm wants its own trace's objects
    return jax.tree.map(lambda leaf: leaf, module)

  def summary(model):
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model)):
      key = jax.tree_util.keystr(path)
      if "count" in key:
        out.setdefault("dropout counts", []).append(int(leaf[...]))
      elif "['b1']['bn']['mean']" in key:
        out["b1 bn mean[0]"] = leaf[...][0]
    return out

  def train(call_for):
    def prog(rm):
      call = call_for(rm)
      model = make(ref_params=False, ref=True)
      losses, gnorm = [], 0.
      for x in (x0, x1):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        def loss(params):
          m = retrace(nnx.merge(graphdef, params, rest))
          h = call(m.b2, call(m.b1, jnp.asarray(x)))
          return jnp.sum((h - 0.3) ** 2)
        v, g = jax.value_and_grad(loss)(params)
        losses.append(v)
        gnorm = gnorm + sum(float(jnp.sum(l ** 2)) for l in jax.tree.leaves(g))
      return dict(losses=losses, grad_sq=gnorm, **summary(model))
    return prog

  def hijax(rm):
    model = make(ref_params=True, hijax=True, ref=True)
    call = lambda b, x: rm(lambda b, x: b(x))(b, x)
    grads = []
    for x in (x0, x1):
      def loss(x):
        m = retrace(model)
        return jnp.sum(call(m.b2, call(m.b1, x)) ** 2)
      grads.append(jnp.sum(jax.grad(loss)(jnp.asarray(x)) ** 2))
    return dict(input_grad_sq=grads, **summary(model))

  # nnx.remat stands for jax.remat in the nnx.remat row; "no remat" there is
  # the plain call.
  def nnx_remat_call(rm):
    if rm is _IDENTITY:
      return lambda b, x: b(x)
    return lambda b, x: nnx.remat(lambda b, x: b(x))(b, x)

  return [
      ("Flax NNX, `var_defaults(ref=True)`",
       "Linear-BatchNorm-Dropout x2, 2 steps of value_and_grad; `jax.remat` per block",
       train(lambda rm: lambda b, x: rm(lambda b, x: b(x))(b, x))),
      ("Flax NNX, `var_defaults(ref=True)`", "the same with `nnx.remat` per block",
       train(nnx_remat_call)),
      ("Flax NNX, `var_defaults(hijax=True, ref=True)`",
       "the same model, grad w.r.t. the input; `jax.remat` per block", hijax),
  ]


def _IDENTITY(fun=None, **kwargs):
  del kwargs
  return (lambda f: f) if fun is None else fun


def _plain(value):
  """JSON-able nested lists / floats / bools."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  arr = np.asarray(value)
  if arr.dtype == bool:
    return arr.tolist()
  return np.asarray(arr, np.float64).tolist()


_OWNERS = (("/jax_remat_refs/", "the package"), ("/flax/", "Flax"),
           ("/jaxlib/", "JAX"), ("/jax/", "JAX"))


def _owner(path):
  for marker, name in _OWNERS:
    if marker in path:
      return name
  return "the program"


def _origin(exc):
  """Who raised `exc`: the innermost frame's owner and, when that is JAX,
  the innermost frame outside JAX if it is Flax's or the package's."""
  owners = [_owner(f.filename) for f in traceback.extract_tb(exc.__traceback__)]
  if not owners:
    return "the program"
  where = owners[-1]
  if where == "JAX":
    caller = next((o for o in reversed(owners) if o != "JAX"), "the program")
    if caller != "the program":
      where += f", called from {caller}"
  return where


def _first_line(exc):
  try:
    text = str(exc).strip()
  except Exception as e:  # pylint: disable=broad-except
    # (JAX's message about a string memory space fails to format itself)
    return f"<str() of the exception raised {type(e).__name__}: {e}>"
  return text.splitlines()[0] if text else ""


def child(mode, enable_checks):
  import jax
  if enable_checks:
    jax.config.update("jax_enable_checks", True)
  import jax_remat_refs
  if mode in ("none", "upstream"):
    jax_remat_refs.deactivate()
  rm = jax.remat if mode in ("upstream", "package") else _IDENTITY
  results = []
  for feature, name, prog in programs():
    try:
      out = {"ok": True, "values": _plain(prog(rm))}
    except Exception as e:  # pylint: disable=broad-except
      msg = _first_line(e)
      out = {"ok": False, "type": type(e).__name__, "msg": msg,
             "origin": _origin(e)}
    results.append({"feature": feature, "program": name, **out})
  meta = {"jax": jax.__version__}
  try:
    import flax
    meta["flax"] = flax.__version__
  except ImportError:
    meta["flax"] = None
  print(json.dumps({"meta": meta, "results": results}))


# -- the table (parent) -------------------------------------------------------

def _fmt_num(x):
  if isinstance(x, bool):
    return str(x).lower()
  if isinstance(x, list):
    if len(x) > 4:
      return f"[{_fmt_num(x[0])}, ..., {_fmt_num(x[-1])}]"
    return "[" + ", ".join(_fmt_num(v) for v in x) + "]"
  if float(x).is_integer() and abs(x) < 1e9:
    return str(int(x))
  return f"{x:.4g}"


def _fmt_values(values, only=None):
  return ", ".join(f"{k} {_fmt_num(v)}" for k, v in values.items()
                   if only is None or k in only)


def _close(a, b):
  try:
    return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                            rtol=RTOL, atol=ATOL))
  except ValueError:
    return False


def _fmt_error(r):
  msg = r["msg"]
  short = msg if len(msg) <= 70 else msg[:67] + "..."
  label = ""
  if "only one reference to a mutable array" in msg or \
      "both closed over and passed" in msg:
    label = " (JAX's aliasing check)"
  text = f"{r['type']}{label} inside {r['origin']}"
  if not label and short:
    text += ": `" + short.replace("`", "'").replace("|", "\\|") + "`"
  return text


def _cell(r, ref):
  """r: a remat result; ref: the no-remat result under the same activation."""
  if not r["ok"]:
    if not ref["ok"] and (r["type"], r["msg"]) == (ref["type"], ref["msg"]):
      return "same error"
    return _fmt_error(r)
  if ref["ok"]:
    bad = [k for k in ref["values"]
           if k not in r["values"] or not _close(r["values"][k], ref["values"][k])]
    if not bad:
      return "= no remat"
    return "wrong: " + _fmt_values(r["values"], only=bad)
  return _fmt_values(r["values"])


def table(runs):
  lines = ["| feature | program | no remat | upstream remat | package remat |",
           "|---|---|---|---|---|"]
  for i, none in enumerate(runs["none"]["results"]):
    none_pkg = runs["none_package"]["results"][i]
    up = runs["upstream"]["results"][i]
    pkg = runs["package"]["results"][i]
    first = _fmt_values(none["values"]) if none["ok"] else _fmt_error(none)
    if none_pkg["ok"] != none["ok"] or (
        none["ok"] and _cell(none_pkg, none) != "= no remat"):
      alt = (_fmt_values(none_pkg["values"]) if none_pkg["ok"]
             else _fmt_error(none_pkg))
      first += f" (package active: {alt})"
    lines.append(f"| {none['feature']} | {none['program']} | {first} | "
                 f"{_cell(up, none)} | {_cell(pkg, none_pkg)} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
  parser.add_argument("--enable-checks", action="store_true",
                      help="run every program with jax_enable_checks on")
  parser.add_argument("--json", help="also write the raw results here")
  args = parser.parse_args()
  if args.child:
    child(args.child, args.enable_checks)
    return
  env = dict(os.environ, JAX_TRACEBACK_FILTERING="off")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                  env.get("PYTHONPATH")) if p)
  runs = {}
  for mode in MODES:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode]
    if args.enable_checks:
      cmd.append("--enable-checks")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
      sys.stderr.write(proc.stderr)
      raise SystemExit(f"the {mode} run failed (exit {proc.returncode})")
    runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
  meta = runs["package"]["meta"]
  print(f"jax {meta['jax']}, flax {meta['flax'] or '-'}, "
        f"jax_enable_checks {'on' if args.enable_checks else 'off'}\n")
  print(table(runs))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(runs, f, indent=1)


if __name__ == "__main__":
  main()
