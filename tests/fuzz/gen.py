"""A seeded generator of small JAX programs over refs.

A program is a tree of statements (`Line`, `Remat`, `Cond`, `Fori`, `Scan`)
plus its inputs and external refs. `Program.source()` prints it as one
standalone Python file whose ``build(remat, ...)`` returns the function; with
``remat=False`` every remat wrapper is the identity, which is the oracle.
Everything else (jit placement, control flow, ref effects) is the same in both.

Values are kept bounded (each value carries a rough bound; results that could
grow are squashed with tanh/sin, loop carries always are), so float32 results
of the two versions can be compared with tight tolerances. Values written to
refs that are not differentiated (the external refs) go through
`lax.stop_gradient`; the float inputs are what the tests differentiate.

Besides statements drawn one at a time, a program may hold *motifs*
(`Generator.s_motif`): chains of pieces that thread one differentiated value
through reads and writes of one ref -- loops writing the ref at the loop index
and reading it whole, nested remats with mixed policies that write the ref
while enclosing remats read it before and after, jit blocks, refs made from
the value inside remat bodies, and `lax.stop_gradient` writes into external
refs at the end of a body. These are the shapes independent statements
rarely line up into.
"""
from __future__ import annotations

import copy
import dataclasses
import random
from typing import Optional

import numpy as np

POLICIES = (
    None,
    "jax.checkpoint_policies.nothing_saveable",
    "jax.checkpoint_policies.dots_saveable",
    "jax.checkpoint_policies.everything_saveable",
    "jax.checkpoint_policies.dots_with_no_batch_dims_saveable",
    "names",  # save_only_these_names(...) over the program's checkpoint names
)

SQUASH_AT = 6.0     # values whose bound exceeds this are squashed
WRITE_BOUND = 2.0   # values written to refs are squashed above this
REF_BOUND = 3.0     # assumed bound of a float ref read
INT_BOUND = 8.0     # assumed bound of an int ref read (as float)


def source_header(what: str) -> list:
  """The first lines of a printed program (both generators use them)."""
  return [
      f'"""Fuzz program ({what}): remat must be transparent.',
      "",
      "Run it: it prints each mode with and without remat; they must agree.",
      '"""',
      "import numpy as np",
      "import jax",
      "import jax.numpy as jnp",
      "from jax import lax",
      "from jax.ad_checkpoint import checkpoint_name",
      "import jax_remat_refs  # noqa: F401  (activates the patch)",
  ]


# --------------------------------------------------------------------------
# AST

@dataclasses.dataclass
class Line:
  """One line of straight-line code: a read, write, arithmetic, callback..."""
  text: str

  def emit(self, ind):
    return [ind + self.text]

  def children(self):
    return []


def _tup(items):
  if not items:
    return "()"
  return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _emit_body(stmts, ind):
  lines = []
  for s in stmts:
    lines.extend(s.emit(ind))
  return lines


@dataclasses.dataclass
class Remat:
  """``def blk(params): body; return rets`` wrapped in remat, then called."""
  name: str
  params: list          # parameter names (values and refs; same names outside)
  body: list
  rets: list            # expressions returned
  outs: list            # names bound by the caller
  policy: Optional[str]
  prevent_cse: bool
  jit: str = "none"     # "none" | "inner" (remat(jit(f))) | "outer" (jit(remat(f)))
  enabled: bool = True  # False: no remat wrapper at all (used when minimizing)

  def emit(self, ind):
    lines = [f"{ind}def {self.name}({', '.join(self.params)}):"]
    lines += _emit_body(self.body, ind + "  ")
    lines.append(f"{ind}  return {_tup(self.rets)}")
    if self.jit == "inner":
      lines.append(f"{ind}{self.name} = jax.jit({self.name})")
    if self.enabled:
      kw = []
      if self.policy is not None:
        kw.append(f"policy={self.policy}")
      kw.append(f"prevent_cse={self.prevent_cse}")
      lines.append(f"{ind}{self.name} = ckpt({self.name}, {', '.join(kw)})")
    if self.jit == "outer":
      lines.append(f"{ind}{self.name} = jax.jit({self.name})")
    call = f"{self.name}({', '.join(self.params)})"
    lines.append(f"{ind}{_tup(self.outs)} = {call}" if self.outs else ind + call)
    return lines

  def children(self):
    return [self.body]


@dataclasses.dataclass
class Cond:
  name: str
  pred: str
  operands: list
  tbody: list
  trets: list
  fbody: list
  frets: list
  outs: list

  def emit(self, ind):
    lines = []
    for tag, body, rets in (("t", self.tbody, self.trets),
                            ("f", self.fbody, self.frets)):
      lines.append(f"{ind}def {tag}{self.name}(ops):")
      if self.operands:
        lines.append(f"{ind}  {_tup(self.operands)} = ops")
      lines += _emit_body(body, ind + "  ")
      lines.append(f"{ind}  return {_tup(rets)}")
    call = (f"lax.cond({self.pred}, t{self.name}, f{self.name}, "
            f"{_tup(self.operands)})")
    lines.append(f"{ind}{_tup(self.outs)} = {call}" if self.outs else ind + call)
    return lines

  def children(self):
    return [self.tbody, self.fbody]


@dataclasses.dataclass
class Fori:
  name: str
  index: str
  trips: int
  carry: list
  body: list
  rets: list
  outs: list

  def emit(self, ind):
    lines = [f"{ind}def {self.name}({self.index}, carry):"]
    if self.carry:
      lines.append(f"{ind}  {_tup(self.carry)} = carry")
    lines += _emit_body(self.body, ind + "  ")
    lines.append(f"{ind}  return {_tup(self.rets)}")
    call = f"lax.fori_loop(0, {self.trips}, {self.name}, {_tup(self.carry)})"
    lines.append(f"{ind}{_tup(self.outs)} = {call}" if self.outs else ind + call)
    return lines

  def children(self):
    return [self.body]


@dataclasses.dataclass
class Scan:
  name: str
  xname: str
  xs: Optional[str]     # expression scanned over, or None (length only)
  length: int
  carry: list
  body: list
  rets: list
  y: str
  outs: list
  ys: str

  def emit(self, ind):
    lines = [f"{ind}def {self.name}(carry, {self.xname}):"]
    if self.carry:
      lines.append(f"{ind}  {_tup(self.carry)} = carry")
    lines += _emit_body(self.body, ind + "  ")
    lines.append(f"{ind}  return {_tup(self.rets)}, {self.y}")
    if self.xs is None:
      call = f"lax.scan({self.name}, {_tup(self.carry)}, None, length={self.length})"
    else:
      call = f"lax.scan({self.name}, {_tup(self.carry)}, {self.xs})"
    lines.append(f"{ind}{_tup(self.outs)}, {self.ys} = {call}")
    return lines

  def children(self):
    return [self.body]


@dataclasses.dataclass
class RefDecl:
  name: str
  dtype: str            # "float32" | "int32"
  value: np.ndarray
  passing: str          # "arg" | "closure"


@dataclasses.dataclass
class Program:
  seed: int
  inputs: list          # (name, np.ndarray)
  refs: list            # RefDecl
  body: list
  outputs: list         # names
  jit: bool             # jax.jit around the whole function
  jit_grad: bool        # also run jax.jit(jax.grad(...)) as a mode
  modes: Optional[tuple] = None  # run only these modes (set when minimizing)

  def all_modes(self):
    return ("primal", "vjp") + (("jit_grad",) if self.jit_grad else ())

  def copy(self):
    return copy.deepcopy(self)

  def source(self) -> str:
    closed = [r.name for r in self.refs if r.passing == "closure"]
    args = [r.name for r in self.refs if r.passing == "arg"]
    xs = [n for n, _ in self.inputs]
    out = [
        *source_header(f"seed {self.seed}"),
        "",
        "CALLS = [0]",
        "",
        "",
        "def _cb(*args):",
        "  CALLS[0] += 1",
        "",
        "",
        f"def build(remat{''.join(', ' + n for n in closed)}):",
        "  def ckpt(fun, **kw):",
        "    return jax.checkpoint(fun, **kw) if remat else fun",
        "",
        f"  def f({', '.join(xs + args)}):",
    ]
    out += _emit_body(self.body, "    ")
    out.append(f"    return {_tup(self.outputs)}")
    out.append("  return jax.jit(f)" if self.jit else "  return f")
    out += ["", "", "def make_refs():", "  return {"]
    for r in self.refs:
      out.append(f"      {r.name!r}: jax.new_ref({_array_src(r.value, r.dtype)}),")
    out += ["  }", "", ""]
    out.append("XS = (" + "".join(
        _array_src(v, "float32") + ", " for _, v in self.inputs) + ")")
    out.append(f"CLOSED_REFS = {tuple(closed)!r}")
    out.append(f"ARG_REFS = {tuple(args)!r}")
    modes = self.all_modes() if self.modes is None else self.modes
    out.append(f"MODES = {tuple(modes)!r}")
    out += HARNESS.splitlines()
    return "\n".join(out) + "\n"


def _array_src(v, dtype):
  v = np.asarray(v)
  conv = (lambda x: str(np.float32(x))) if dtype == "float32" else str
  if v.ndim == 0:
    lit = conv(v.item())
  else:
    lit = "[" + ", ".join(conv(x) for x in v.tolist()) + "]"
  return f"np.array({lit}, np.{dtype})"


HARNESS = '''

def _setup(remat):
  refs = make_refs()
  f = build(remat, *[refs[k] for k in CLOSED_REFS])
  return refs, f, [refs[k] for k in ARG_REFS]


def _contents(refs):
  return {k: np.asarray(r[...]) for k, r in refs.items()}


def run_primal(remat):
  refs, f, args = _setup(remat)
  CALLS[0] = 0
  out = f(*XS, *args)
  jax.effects_barrier()
  return dict(out=out, calls=CALLS[0], refs=_contents(refs))


def run_vjp(remat):
  # Callback counts are not compared here: how often a callback fires while
  # partial eval splits a program into forward and backward is JAX's choice
  # (it differs with remat even for programs without refs).
  refs, f, args = _setup(remat)
  out, f_vjp = jax.vjp(lambda *xs: f(*xs, *args), *XS)
  grads = f_vjp(jax.tree.map(jnp.ones_like, out))
  return dict(out=out, grads=grads, refs=_contents(refs))


def run_jit_grad(remat):
  refs, f, args = _setup(remat)

  def loss(*xs):
    return sum(jnp.sum(o) for o in f(*xs, *args))
  grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(XS)))))(*XS)
  jax.effects_barrier()
  return dict(grads=grads, refs=_contents(refs))


RUNNERS = dict(primal=run_primal, vjp=run_vjp, jit_grad=run_jit_grad)


if __name__ == "__main__":
  for mode in MODES:
    for remat in (False, True):
      print(f"{mode:8s} remat={remat!s:5s}", RUNNERS[mode](remat))'''


# --------------------------------------------------------------------------
# generation

@dataclasses.dataclass
class Val:
  name: str
  shape: tuple
  bound: float
  diff: bool = False    # may carry a gradient (under-approximated: safe)


@dataclasses.dataclass
class RefV:
  name: str
  shape: tuple
  dtype: str            # "float32" | "int32"
  external: bool
  diff: bool = False    # created from a differentiated value


class Scope:
  def __init__(self, parent: Optional["Scope"] = None):
    self.vals = list(parent.vals) if parent else []
    self.refs = list(parent.refs) if parent else []
    self.idx = list(parent.idx) if parent else []        # int32 scalars
    self.remat_depth = parent.remat_depth if parent else 0
    self.ctrl_depth = parent.ctrl_depth if parent else 0
    self.n_inherited = len(self.vals)

  def new_vals(self):
    return self.vals[self.n_inherited:]


class Generator:
  """Generates one `Program` from a seed."""

  def __init__(self, seed: int, legacy: bool = False):
    self.seed = seed
    self.legacy = legacy
    self.rng = random.Random(seed)
    self.counter = 0
    self.ckpt_names = []
    self.n_remat = 0

  def fresh(self, prefix):
    self.counter += 1
    return f"{prefix}{self.counter}"

  # ---- helpers ------------------------------------------------------------

  def rand_values(self, shape, lo=-1.5, hi=1.5):
    v = np.round(np.array([self.rng.uniform(lo, hi)
                           for _ in range(int(np.prod(shape)))]), 3)
    return v.reshape(shape).astype(np.float32)

  def pick_val(self, scope, prefer_new=0.6):
    new = scope.new_vals()
    if new and self.rng.random() < prefer_new:
      return self.rng.choice(new)
    recent = scope.vals[-6:]
    return self.rng.choice(recent if self.rng.random() < 0.7 else scope.vals)

  def squash(self, expr, bound, limit=SQUASH_AT):
    if bound <= limit:
      return expr, bound
    fn = self.rng.choice(("jnp.tanh", "jnp.sin"))
    return f"{fn}({expr})", 1.0

  def adapt(self, v: Val, shape):
    """An expression of `v` with the given shape, and its bound."""
    if v.shape == shape:
      return v.name, v.bound
    if shape == ():
      if self.rng.random() < 0.5:
        return f"jnp.sum({v.name})", v.bound * v.shape[0]
      return f"{v.name}[{self.rng.randrange(v.shape[0])}]", v.bound
    m = shape[0]
    if v.shape == ():
      if self.rng.random() < 0.5:
        return f"jnp.broadcast_to({v.name}, ({m},))", v.bound
      return f"{v.name} * jnp.ones({m}, jnp.float32)", v.bound
    k = v.shape[0]
    r = self.rng.random()
    if k > m and r < 0.6:
      a = self.rng.randrange(k - m + 1)
      return f"{v.name}[{a}:{a + m}]", v.bound
    if k < m and r < 0.6:
      return f"jnp.pad({v.name}, (0, {m - k}))", v.bound
    return f"jnp.broadcast_to(jnp.sum({v.name}), ({m},))", v.bound * k

  def pick_index(self, scope, ref: RefV):
    """(index source, index object source for jax.ref.*, region shape)."""
    if ref.shape == ():
      return "...", "...", ()
    n = ref.shape[0]
    opts = ["whole", "int", "slice"]
    if scope.idx:
      opts += ["loop", "loop"]
    irefs = [r for r in scope.refs if r.dtype == "int32" and r is not ref]
    if irefs:
      opts.append("iref")
    kind = self.rng.choice(opts)
    if kind == "whole":
      return "...", "...", (n,)
    if kind == "int":
      k = self.rng.randrange(n)
      return str(k), str(k), ()
    if kind == "slice":
      a = self.rng.randrange(n)
      b = self.rng.randrange(a + 1, n + 1)
      return f"{a}:{b}", f"slice({a}, {b})", (b - a,)
    if kind == "loop":
      e = f"{self.rng.choice(scope.idx)} % {n}"
      return e, e, ()
    ir = self.rng.choice(irefs)
    src = f"{ir.name}[...]" if ir.shape == () else f"{ir.name}[{self.rng.randrange(ir.shape[0])}]"
    e = f"{src} % {n}"
    return e, e, ()

  def pick_policy(self):
    policy = self.rng.choice(POLICIES)
    if policy == "names":
      pool = self.ckpt_names or ["n0"]
      picked = self.rng.sample(pool, self.rng.randint(1, min(2, len(pool))))
      policy = ("jax.checkpoint_policies.save_only_these_names("
                + ", ".join(repr(p) for p in picked) + ")")
    return policy

  def add_val(self, scope, shape, bound, diff=False):
    v = Val(self.fresh("v"), shape, bound, diff)
    scope.vals.append(v)
    return v

  # ---- straight-line statements --------------------------------------------

  def s_read(self, scope):
    refs = [r for r in scope.refs if r.dtype == "float32"]
    if not refs:
      return None
    r = self.rng.choice(refs)
    idx, _, shape = self.pick_index(scope, r)
    v = self.add_val(scope, shape, REF_BOUND, r.diff)
    return [Line(f"{v.name} = {r.name}[{idx}]")]

  def s_read_int(self, scope):
    refs = [r for r in scope.refs if r.dtype == "int32"]
    if not refs:
      return None
    r = self.rng.choice(refs)
    idx, _, shape = self.pick_index(scope, r)
    v = self.add_val(scope, shape, INT_BOUND)
    return [Line(f"{v.name} = {r.name}[{idx}].astype(jnp.float32)")]

  def s_unary(self, scope):
    a = self.pick_val(scope)
    fn = self.rng.choice(("jnp.sin", "jnp.cos", "jnp.tanh"))
    v = self.add_val(scope, a.shape, 1.0, a.diff)
    return [Line(f"{v.name} = {fn}({a.name})")]

  def s_binary(self, scope):
    a = self.pick_val(scope)
    b = self.pick_val(scope)
    bex, bb = self.adapt(b, a.shape)
    op = self.rng.choice(("+", "-", "*", "*"))
    bound = a.bound * bb if op == "*" else a.bound + bb
    expr, bound = self.squash(f"{a.name} {op} {bex}", bound)
    v = self.add_val(scope, a.shape, bound, a.diff or b.diff)
    return [Line(f"{v.name} = {expr}")]

  def s_dot(self, scope):
    vecs = [v for v in scope.vals if v.shape != ()]
    if not vecs:
      return None
    a = self.rng.choice(vecs)
    b = self.pick_val(scope)
    bex, bb = self.adapt(b, a.shape)
    expr, bound = self.squash(f"jnp.dot({a.name}, {bex})",
                              a.bound * bb * a.shape[0])
    v = self.add_val(scope, (), bound, a.diff or b.diff)
    return [Line(f"{v.name} = {expr}")]

  def s_where(self, scope):
    a = self.pick_val(scope)
    b = self.pick_val(scope)
    c = self.pick_val(scope)
    bex, bb = self.adapt(b, a.shape)
    cex, _ = self.adapt(c, a.shape)
    v = self.add_val(scope, a.shape, max(a.bound, bb), a.diff or b.diff)
    return [Line(f"{v.name} = jnp.where({cex} > 0, {a.name}, {bex})")]

  def s_sum(self, scope):
    vecs = [v for v in scope.vals if v.shape != ()]
    if not vecs:
      return None
    a = self.rng.choice(vecs)
    expr, bound = self.squash(f"jnp.sum({a.name})", a.bound * a.shape[0])
    v = self.add_val(scope, (), bound, a.diff)
    return [Line(f"{v.name} = {expr}")]

  def s_name(self, scope):
    a = self.pick_val(scope)
    if self.ckpt_names and self.rng.random() < 0.3:
      nm = self.rng.choice(self.ckpt_names)
    else:
      nm = self.fresh("n")
      self.ckpt_names.append(nm)
    v = self.add_val(scope, a.shape, a.bound, a.diff)
    return [Line(f"{v.name} = checkpoint_name({a.name}, {nm!r})")]

  def s_stop(self, scope):
    a = self.pick_val(scope)
    v = self.add_val(scope, a.shape, a.bound)
    return [Line(f"{v.name} = lax.stop_gradient({a.name})")]

  def s_callback(self, scope):
    # Always with an operand: on jax 0.10.2, jit drops a remat whose only
    # effect is an operand-less callback and whose outputs are unused
    # (upstream remat_dce bug, fixed by 0.12); see the fuzz report.
    return [Line(f"jax.debug.callback(_cb, {self.pick_val(scope).name})")]

  def _write_value(self, scope, ref, shape):
    v = self.pick_val(scope)
    ex, b = self.adapt(v, shape)
    if b > WRITE_BOUND:
      ex = f"{self.rng.choice(('jnp.tanh', 'jnp.sin'))}({ex})"
    # Refs that are not differentiated (external ones, and internal ones made
    # from values without gradients) only take values without gradients.
    if (ref.external or (v.diff and not ref.diff)
        or self.rng.random() < 0.15):
      ex = f"lax.stop_gradient({ex})"
    return ex

  def s_write(self, scope):
    refs = [r for r in scope.refs if r.dtype == "float32"]
    if not refs:
      return None
    r = self.rng.choice(refs)
    idx, idx_obj, shape = self.pick_index(scope, r)
    val = self._write_value(scope, r, shape)
    kind = self.rng.choices(("set", "iadd", "addupdate", "swap"),
                            (4, 3, 0.3 if r.external else 3, 1))[0]
    if kind == "set":
      return [Line(f"{r.name}[{idx}] = {val}")]
    if kind == "iadd":
      return [Line(f"{r.name}[{idx}] += {val}")]
    if kind == "addupdate":
      return [Line(f"jax.ref.addupdate({r.name}, {idx_obj}, {val})")]
    v = self.add_val(scope, shape, REF_BOUND, r.diff)
    return [Line(f"{v.name} = jax.ref.swap({r.name}, {idx_obj}, {val})")]

  def s_write_int(self, scope):
    refs = [r for r in scope.refs if r.dtype == "int32"]
    if not refs:
      return None
    r = self.rng.choice(refs)
    idx, _, shape = self.pick_index(scope, r)
    opts = ["inc", "mix", "sign"] + (["loop"] if scope.idx else [])
    kind = self.rng.choice(opts)
    if kind == "inc":
      val = f"{r.name}[{idx}] + 1"
    elif kind == "mix":
      val = f"({r.name}[{idx}] * 3 + 1) % 7"
    elif kind == "sign":
      ex, _ = self.adapt(self.pick_val(scope), shape)
      val = f"({ex} > 0).astype(jnp.int32)"
    else:
      i = self.rng.choice(scope.idx)
      val = f"{i} + jnp.zeros({shape!r}, jnp.int32)" if shape else i
    return [Line(f"{r.name}[{idx}] = {val}")]

  def s_new_ref(self, scope):
    n = self.n
    shape = self.rng.choice(((), (n,)))
    v = self.pick_val(scope)
    ex, b = self.adapt(v, shape)
    if b > WRITE_BOUND:
      ex = f"jnp.tanh({ex})"
    q = RefV(self.fresh("q"), shape, "float32", external=False, diff=v.diff)
    scope.refs.append(q)
    return [Line(f"{q.name} = jax.new_ref({ex})")]

  # ---- compound statements ---------------------------------------------------

  def s_remat(self, scope, whole=False):
    if scope.remat_depth >= self.max_remat_depth:
      return None
    self.n_remat += 1
    name = self.fresh("blk")
    if whole:
      params = [v.name for v in scope.vals] + [r.name for r in scope.refs]
      inner = Scope(scope)
      inner.remat_depth += 1
      body = self.gen_body(inner, self.budget)
    else:
      vals = self.rng.sample(scope.vals, self.rng.randint(0, min(3, len(scope.vals))))
      refs = self.rng.sample(scope.refs, self.rng.randint(0, len(scope.refs)))
      params = [v.name for v in vals] + [r.name for r in refs]
      inner = Scope(scope)
      inner.remat_depth += 1
      body = self.gen_body(inner, self.rng.randint(1, 5))
    new = inner.new_vals()
    if not self.legacy and new and self.rng.random() < 0.2:
      body += self._sg_write_end(inner, self.rng.choice(new))
    k = self.rng.choice((0, 1, 1, 2, 2, 3)) if not whole else min(3, max(1, len(new)))
    rets = []
    for _ in range(k):
      pool = new if new and self.rng.random() < 0.85 else inner.vals
      rets.append(self.rng.choice(pool))
    outs = [self.add_val(scope, v.shape, v.bound, v.diff) for v in rets]
    policy = self.pick_policy()
    jit = self.rng.choices(("none", "inner", "outer"), self.jit_weights)[0]
    return [Remat(name, params, body, [v.name for v in rets],
                  [v.name for v in outs], policy, self.rng.random() < 0.5, jit)]

  def _pred(self, scope):
    irefs = [r for r in scope.refs if r.dtype == "int32"]
    if irefs and self.rng.random() < 0.3:
      r = self.rng.choice(irefs)
      return f"jnp.sum({r.name}[...]) % 2 == 0"
    v = self.pick_val(scope, prefer_new=0.3)
    return f"{v.name} > 0" if v.shape == () else f"jnp.sum({v.name}) > 0"

  def s_cond(self, scope):
    if scope.ctrl_depth >= 2:
      return None
    name = self.fresh("br")
    pred = self._pred(scope)
    operands = self.rng.sample(scope.vals, self.rng.randint(0, min(2, len(scope.vals))))
    shapes = [self.rng.choice(((), (self.n,))) for _ in range(self.rng.choice((0, 1, 1, 2)))]
    branches = []
    for _ in range(2):
      inner = Scope(scope)
      inner.ctrl_depth += 1
      body = self.gen_body(inner, self.rng.randint(1, 4))
      rets = []
      for s in shapes:
        v = self.pick_val(inner, prefer_new=0.8)
        ex, b = self.adapt(v, s)
        rets.append((ex, b, v.diff))
      branches.append((body, rets))
    (tb, tr), (fb, fr) = branches
    outs = [self.add_val(scope, s, max(tr[i][1], fr[i][1]), tr[i][2] and fr[i][2])
            for i, s in enumerate(shapes)]
    return [Cond(name, pred, [v.name for v in operands], tb, [r[0] for r in tr],
                 fb, [r[0] for r in fr], [v.name for v in outs])]

  def _carry_update(self, inner, c):
    ex, _ = self.adapt(self.pick_val(inner, prefer_new=0.8), c.shape)
    if self.rng.random() < 0.5:
      ex = f"{c.name} + {ex}"
    return f"{self.rng.choice(('jnp.tanh', 'jnp.sin'))}({ex})"

  def s_fori(self, scope):
    if scope.ctrl_depth >= 2:
      return None
    name = self.fresh("loop")
    index = self.fresh("i")
    carry = self.rng.sample(scope.vals, self.rng.randint(0, min(2, len(scope.vals))))
    inner = Scope(scope)
    inner.ctrl_depth += 1
    inner.idx.append(index)
    body = self.gen_body(inner, self.rng.randint(1, 4))
    rets = [self._carry_update(inner, c) for c in carry]
    outs = [self.add_val(scope, c.shape, max(c.bound, 1.0), c.diff) for c in carry]
    return [Fori(name, index, self.rng.randint(1, 3), [c.name for c in carry],
                 body, rets, [v.name for v in outs])]

  def s_scan(self, scope):
    if scope.ctrl_depth >= 2:
      return None
    name = self.fresh("scan")
    xname = self.fresh("x")
    carry = self.rng.sample(scope.vals, self.rng.randint(1, min(2, len(scope.vals))))
    inner = Scope(scope)
    inner.ctrl_depth += 1
    vecs = [v for v in scope.vals if v.shape != ()]
    kind = self.rng.choice(("vals", "arange", "none")) if vecs else \
        self.rng.choice(("arange", "none"))
    length = self.rng.randint(1, 3)
    xs = None
    if kind == "vals":
      src = self.rng.choice(vecs)
      xs, length = src.name, src.shape[0]
      inner.vals.append(Val(xname, (), src.bound, src.diff))
    elif kind == "arange":
      xs = f"jnp.arange({length}, dtype=jnp.int32)"
      inner.idx.append(xname)
    body = self.gen_body(inner, self.rng.randint(1, 4))
    rets = [self._carry_update(inner, c) for c in carry]
    yex, yb = self.adapt(self.pick_val(inner, prefer_new=0.8), ())
    yex, yb = self.squash(yex, yb)
    outs = [self.add_val(scope, c.shape, max(c.bound, 1.0), c.diff) for c in carry]
    ys = self.add_val(scope, (length,), yb)
    return [Scan(name, xname, xs, length, [c.name for c in carry], body, rets,
                 yex, [v.name for v in outs], ys.name)]

  # ---- motifs ------------------------------------------------------------------
  # A motif threads one differentiated value h, shaped like a float ref r,
  # through a chain of pieces (`m_*`); each piece returns its statements and
  # the new (h, r), or None when it does not fit. Pieces nest: loops, remats
  # and jit blocks hold chains of their own.

  PIECES = dict(loop=4, remat=4, read=3, inc=3, mix=2, sg_write=1.5,
                new_ref=1.5, jit=1)
  CONSTS = ("0.125", "0.25", "-0.5", "1.0")

  def s_motif(self, scope, first=None):
    refs = [r for r in scope.refs if r.dtype == "float32"]
    if not refs or scope.ctrl_depth >= 2:
      return None
    vec = [r for r in refs if r.shape != ()]
    r = self.rng.choice(vec if vec and self.rng.random() < 0.85 else refs)
    diff = [v for v in scope.vals if v.diff]
    src = (self.rng.choice(diff[-4:]) if diff and self.rng.random() < 0.9
           else self.pick_val(scope))
    ex, b = self.adapt(src, r.shape)
    ex, b = self.squash(ex, b)
    h = self.add_val(scope, r.shape, b, src.diff)
    stmts = [Line(f"{h.name} = {ex}")]
    if first is None and self.rng.random() < 0.5:
      first = "remat"
    more, h, _ = self.chain(scope, h, r, self.rng.randint(2, 4), first)
    self.budget -= 2
    self.motif_out = h
    return stmts + more

  def chain(self, scope, h, r, k, first=None):
    stmts = []
    for j in range(k):
      table = dict(self.PIECES)
      if scope.ctrl_depth >= 2:
        del table["loop"]
      if scope.remat_depth >= 3:
        del table["remat"]
      if self.motif_nodes <= 0:
        for kind in ("loop", "remat", "jit"):
          table.pop(kind, None)
      kinds, weights = zip(*table.items())
      kind = first if j == 0 and first in table else \
          self.rng.choices(kinds, weights)[0]
      got = getattr(self, "m_" + kind)(scope, h, r)
      if got is None:
        continue
      more, h, r = got
      stmts += more
    return stmts, h, r

  def _at(self, r, idx=None):
    """An index of ref r: `idx % n` when a loop index is given, else a constant."""
    if r.shape == ():
      return "..."
    if idx is not None:
      return f"{idx} % {r.shape[0]}"
    return str(self.rng.randrange(r.shape[0]))

  def _elem(self, h):
    return h.name if h.shape == () else f"{h.name}[{self.rng.randrange(h.shape[0])}]"

  def _motif_const(self, h, r):
    """A small increment for r: a constant, or (a stop_gradient of) h."""
    if self.rng.random() < 0.7:
      return self.rng.choice(self.CONSTS)
    ex = f"jnp.tanh({self._elem(h)}) * 0.25"
    if r.external or not r.diff or self.rng.random() < 0.3:
      ex = f"lax.stop_gradient({ex})"
    return ex

  def _squashed(self, scope, h, expr, bound, diff=True):
    expr, bound = self.squash(expr, bound)
    v = self.add_val(scope, h.shape, bound, diff)
    return [Line(f"{v.name} = {expr}")], v

  def m_read(self, scope, h, r):
    kind = self.rng.choice(("elem", "whole", "sum"))
    if kind == "elem":
      expr, b = f"{h.name} * {r.name}[{self._at(r)}]", h.bound * REF_BOUND
    elif kind == "whole":
      expr, b = (f"jnp.sin({h.name}) * {r.name}[...] + {h.name} * 0.5",
                 REF_BOUND + 0.5 * h.bound)
    else:
      expr = f"{h.name} + jnp.tanh(jnp.sum({r.name}[...])) * 0.5"
      b = h.bound + 0.5
    stmts, v = self._squashed(scope, h, expr, b, h.diff or r.diff)
    return stmts, v, r

  def m_inc(self, scope, h, r):
    others = [q for q in scope.refs if q.dtype == "float32" and q is not r]
    t = self.rng.choice(others) if others and self.rng.random() < 0.25 else r
    irefs = [q for q in scope.refs if q.dtype == "int32"]
    opts = ["add", "decay", "elem"] + (["shift"] if t.shape and t.shape[0] > 1 else [])
    opts += ["count"] if irefs else []
    kind = self.rng.choice(opts)
    if kind == "add":
      line = f"{t.name}[...] += {self.rng.choice(('1.0', '0.5', '0.25'))}"
    elif kind == "decay":
      line = f"{t.name}[...] = {t.name}[...] * 0.5 + {self.rng.choice(self.CONSTS)}"
    elif kind == "elem":
      at = self._at(t)
      line = f"{t.name}[{at}] = {t.name}[{at}] * 0.5 + 0.25"
    elif kind == "shift":
      line = f"{t.name}[1:] = {t.name}[:-1] * 0.5 + 0.25"
    else:
      c = self.rng.choice(irefs)
      at = self._at(c, self.rng.choice(scope.idx) if scope.idx else None)
      line = f"{c.name}[{at}] += 1"
    return [Line(line)], h, r

  def m_mix(self, scope, h, r):
    kind = self.rng.choice(("dot", "tanh", "name") if h.shape else ("tanh", "name"))
    if kind == "dot":
      return self._squashed(scope, h, f"jnp.sin({h.name}) + jnp.dot({h.name}, "
                            f"{h.name}) * 0.1", 1 + 0.1 * h.shape[0] * h.bound ** 2,
                            h.diff) + (r,)
    if kind == "tanh":
      return self._squashed(scope, h, f"jnp.tanh({h.name} * 1.3 + 0.1)", 1.0,
                            h.diff) + (r,)
    nm = self.fresh("n")
    self.ckpt_names.append(nm)
    return self._squashed(scope, h, f"checkpoint_name({h.name}, {nm!r})", h.bound,
                          h.diff) + (r,)

  def _sg_write_end(self, scope, h):
    """``t[...] = lax.stop_gradient(jnp.cos(h)) + t[...] * 0.5`` for an
    external float ref t (h adapted to its shape)."""
    ext = [q for q in scope.refs if q.dtype == "float32" and q.external]
    if not ext:
      return []
    t = self.rng.choice(ext)
    ex, _ = self.adapt(h, t.shape)
    return [Line(f"{t.name}[...] = lax.stop_gradient(jnp.cos({ex})) + "
                 f"{t.name}[...] * 0.5")]

  def m_sg_write(self, scope, h, r):
    if not r.external and r.diff and self.rng.random() < 0.5:
      return [Line(f"{r.name}[...] = jnp.cos({h.name}) + {r.name}[...] * 0.5")], h, r
    stmts = self._sg_write_end(scope, h)
    return (stmts, h, r) if stmts else None

  def m_new_ref(self, scope, h, r):
    t = RefV(self.fresh("t"), h.shape, "float32", external=False, diff=h.diff)
    scope.refs.append(t)
    stmts = [Line(f"{t.name} = jax.new_ref({h.name})"),
             Line(f"{t.name}[...] = {t.name}[...] * 2 + jnp.sin({t.name}[...])")]
    more, v = self._squashed(scope, h, f"{t.name}[...]", 2 * h.bound + 1, h.diff)
    # The rest of the chain works on the new ref half the time.
    return stmts + more, v, (t if self.rng.random() < 0.5 else r)

  def m_loop(self, scope, h, r):
    self.motif_nodes -= 1
    inner = Scope(scope)
    inner.ctrl_depth += 1
    idx = self.fresh("i")
    inner.idx.append(idx)
    at = self._at(r, idx)
    body = []
    rw = self.rng.random() < 0.8
    rw_line = Line(f"{r.name}[{at}] = {r.name}[{at}] + {self._motif_const(h, r)}")
    before = rw and self.rng.random() < 0.5
    if before:
      body.append(rw_line)
    hh, rr = h, r
    if self.rng.random() < 0.5:
      more, hh, rr = self.chain(inner, h, r, self.rng.randint(1, 2))
      body += more
    if rw and not before:
      body.append(rw_line)
    if self.rng.random() < 0.7:
      ret = f"jnp.sin({hh.name}) * {rr.name}[...] + {hh.name} * 0.5"
    else:
      ret = f"jnp.tanh({hh.name} * {rr.name}[{self._at(rr, idx)}]) + {hh.name} * 0.5"
    # |carry| <= R + |carry| / 2 stays below 2 R = SQUASH_AT.
    out = self.add_val(scope, h.shape, 2 * REF_BOUND, h.diff or hh.diff or rr.diff)
    trips = self.rng.randint(1, 3)
    if self.rng.random() < 0.6:
      return [Fori(self.fresh("loop"), idx, trips, [h.name], body, [ret],
                   [out.name])], out, r
    y = self.rng.choice((f"{rr.name}[{self._at(rr, idx)}]",
                         f"jnp.sin(jnp.sum({hh.name}))"))
    ys = self.add_val(scope, (trips,), REF_BOUND)
    return [Scan(self.fresh("scan"), idx, f"jnp.arange({trips}, dtype=jnp.int32)",
                 trips, [h.name], body, [ret], y, [out.name], ys.name)], out, r

  def _motif_block(self, scope, h, r, remat):
    self.motif_nodes -= 1
    inner = Scope(scope)
    if remat:
      inner.remat_depth += 1
    body = []
    hh = h
    if remat and self.rng.random() < 0.5:      # a read before the nested call
      more, hh, _ = self.m_read(inner, hh, r)
      body += more
    more, hh, rr = self.chain(inner, hh, r, self.rng.randint(1, 3))
    body += more
    if remat and self.rng.random() < 0.5:      # ... and after it
      more, hh, _ = self.m_read(inner, hh, r)
      body += more
    if remat and self.rng.random() < 0.35:     # a stop_gradient write at the end
      body += self._sg_write_end(inner, hh)
    refs = [q for q in scope.refs if self.rng.random() < 0.3]
    params = [h.name] + [q.name for q in refs]
    out = self.add_val(scope, h.shape, hh.bound, hh.diff)
    if remat:
      jit = self.rng.choices(("none", "inner", "outer"), (6, 1, 1))[0]
      blk = Remat(self.fresh("blk"), params, body, [hh.name], [out.name],
                  self.pick_policy(), self.rng.random() < 0.5, jit)
    else:
      blk = Remat(self.fresh("jb"), params, body, [hh.name], [out.name],
                  None, True, "inner", enabled=False)
    return [blk], out, r

  def m_remat(self, scope, h, r):
    self.n_remat += 1
    return self._motif_block(scope, h, r, remat=True)

  def m_jit(self, scope, h, r):
    return self._motif_block(scope, h, r, remat=False)

  # ---- bodies and programs -------------------------------------------------

  SIMPLE = dict(read=6, read_int=2, unary=4, binary=5, dot=2, where=2, sum=1,
                name=2, stop=1, callback=2, write=7, write_int=2, new_ref=2)
  COMPOUND = dict(remat=4, cond=2, fori=2, scan=2, motif=2)

  def gen_body(self, scope, n):
    stmts = []
    for _ in range(n):
      if self.budget <= 0:
        break
      table = dict(self.SIMPLE)
      if self.budget > 3:
        table.update(self.COMPOUND)
        if self.legacy:
          del table["motif"]
      kinds, weights = zip(*table.items())
      for _attempt in range(10):
        kind = self.rng.choices(kinds, weights)[0]
        got = getattr(self, "s_" + kind)(scope)
        if got is not None:
          break
      else:
        continue
      self.budget -= 1
      stmts.extend(got)
    return stmts

  def generate(self) -> Program:
    rng = self.rng
    self.n = n = rng.choice((2, 3, 4))
    self.budget = rng.randint(4, 16)
    self.max_remat_depth = rng.choice((1, 2, 2, 3))
    self.jit_weights = (10, 1, 1) if self.legacy else (8, 1, 1)
    # Loops, remats and jit blocks in motifs.
    self.motif_nodes = 0 if self.legacy else rng.randint(2, 6)
    self.last_motif = None
    top = Scope()
    inputs = []
    for _ in range(rng.randint(1, 3)):
      shape = rng.choice(((), (n,)))
      v = self.add_val(top, shape, 1.5, diff=True)
      v.name = self.fresh("x")
      inputs.append((v.name, self.rand_values(shape)))
    refs = []
    n_float = rng.randint(1, 4)
    for _ in range(n_float):
      shape = rng.choice(((), (n,), (n,)))
      name = self.fresh("r")
      refs.append(RefDecl(name, "float32", self.rand_values(shape),
                          rng.choice(("arg", "closure"))))
      top.refs.append(RefV(name, shape, "float32", external=True))
    if rng.random() < 0.4:
      shape = rng.choice(((), (n,)))
      name = self.fresh("ri")
      value = np.array([rng.randint(0, 5) for _ in range(int(np.prod(shape)))],
                       np.int32).reshape(shape)
      refs.append(RefDecl(name, "int32", value, rng.choice(("arg", "closure"))))
      top.refs.append(RefV(name, shape, "int32", external=True))

    if self.legacy:
      kind = "whole" if rng.random() < 0.25 else "free"
    else:
      kind = rng.choices(("whole", "motif", "free"), (0.2, 0.3, 0.5))[0]
    if kind == "whole":
      body = self.s_remat(top, whole=True)
    elif kind == "motif":
      # A program around a motif: a few statements before and after it.
      body = self.gen_body(top, rng.randint(0, 2))
      body += self.s_motif(top, first="remat" if rng.random() < 0.7 else None)
      self.last_motif = self.motif_out
      self.budget = max(self.budget, 2)
      body += self.gen_body(top, rng.randint(0, 2))
      if self.n_remat == 0:
        self.budget = 4
        body += self.s_remat(top)
    else:
      body = self.gen_body(top, self.budget + 4)
      if self.n_remat == 0:  # every program has a remat somewhere
        self.budget = 4
        body += self.s_remat(top)
    cands = [v for v in top.vals if v not in top.vals[:len(inputs)]] or top.vals
    recent = cands[-5:]
    outputs = [v.name for v in rng.sample(recent, rng.randint(1, min(3, len(recent))))]
    if self.last_motif is not None and self.last_motif.name not in outputs:
      outputs[0] = self.last_motif.name
    return Program(self.seed, inputs, refs, body, outputs,
                   jit=rng.random() < 0.15,
                   jit_grad=rng.random() < (0.1 if self.legacy else 0.2))


def generate(seed: int, legacy: bool = False) -> Program:
  """The program of `seed`. ``legacy=True``: the program this seed gave before
  motifs were added (the seeds in tests/test_fuzz.py's FOUND_BY_SCALE_RUNS
  and the README's scale runs are seeds of that generator)."""
  return Generator(seed, legacy).generate()
