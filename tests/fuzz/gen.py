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

Ref API features (`tests.fuzz.ref_api` maps JAX's ref API onto them; each
program lists its tags in ``Program.features`` and its source's docstring):
refs of kind ``"no_grad_no_remat"`` (external and made inside; they take
differentiated values without `lax.stop_gradient`, their reads carry no
gradient), `jax.ref.get` / `set` / `swap` / `addupdate`, refs made inside
that end frozen (`jax.ref.freeze`) or freed (`jax.ref.free_ref`) or start
empty (`jax.ref.empty_ref`, under jit), a ``vjp_refs`` mode accumulating
gradients into refs through the vjp function's ``with_refs``
(`jax.ad.GradValue` / `DontWant` for some inputs), one remat function
applied to several refs (tied weights), `lax.while_loop` and
`lax.fori_loop` with a traced trip count over values without gradient
(JAX cannot reverse-differentiate a while loop), and a small share of
programs handing one ref to a remat twice (``ALIASED``: JAX's aliasing
error from the remat run is accepted, see `tests.fuzz.oracle`). Features
the installed JAX lacks are not generated (the random draws are made either
way).
"""
from __future__ import annotations

import copy
import dataclasses
import random
from typing import Optional

import numpy as np

from tests.fuzz import ref_api

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

# Custom-rule functions with refs of their own (`s_custom`): sin with the
# rule cos x + 0.5, and tanh with the rule 1 - x * x (the derivative of tanh
# would be 1 - tanh(x)^2), so a rule lost to discharge changes gradients.
CUSTOM_FUNCTIONS_SRC = [
    "@jax.custom_vjp",
    "def _own_refs_vjp(x):",
    "  r = jax.new_ref(x)",
    "  r[...] = jnp.sin(r[...])",
    "  return r[...]",
    "",
    "",
    "def _own_refs_vjp_fwd(x):",
    "  r = jax.new_ref(x)",
    "  r[...] = jnp.cos(r[...]) + 0.5",
    "  return _own_refs_vjp(x), r[...]",
    "",
    "",
    "_own_refs_vjp.defvjp(_own_refs_vjp_fwd, lambda res, g: (g * res,))",
    "",
    "",
    "@jax.custom_jvp",
    "def _own_refs_jvp(x):",
    "  r = jax.new_ref(x)",
    "  r[...] = jnp.tanh(r[...])",
    "  return r[...]",
    "",
    "",
    "_own_refs_jvp.defjvp(lambda xs, ts: (_own_refs_jvp(xs[0]),",
    "                                    ts[0] * (1. - xs[0] * xs[0])))",
    "",
    "",
]
REF_BOUND = 3.0     # assumed bound of a float ref read
INT_BOUND = 8.0     # assumed bound of an int ref read (as float)


def source_header(what: str, features=()) -> list:
  """The first lines of a printed program (both generators use them)."""
  return [
      f'"""Fuzz program ({what}): remat must be transparent.',
      "",
      "Run it: it prints each mode with and without remat; they must agree.",
      *([f"Features: {', '.join(sorted(features))}."] if features else []),
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


def alias_names(fresh, rng, inner, r):
  """Two names of ref `r` in the remat body scope `inner` (both generators):
  two fresh parameters both given `r`, or one given `r` while the body also
  closes over it. Returns (the name read, the name written, parameter names,
  argument names); `inner.refs` gets the new names."""
  inner.has_aliases = True
  a = dataclasses.replace(r, name=fresh("pa"), referent=r.ident)
  if rng.random() < 0.6:
    b = dataclasses.replace(r, name=fresh("pb"), referent=r.ident)
    inner.refs = [q for q in inner.refs if q is not r] + [a, b]
    params, args = [a.name, b.name], [r.name, r.name]
  else:
    b = r
    inner.refs = inner.refs + [a]
    params, args = [a.name], [r.name]
  if rng.random() < 0.5:
    a, b = b, a
  return a, b, params, args


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
  call_args: Optional[list] = None  # arguments of the call when not `params`
                                    # (a ref passed twice: aliasing)
  calls: Optional[list] = None      # (args, outs) per call: one function
                                    # called several times (tied weights)

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
    calls = self.calls if self.calls is not None else [
        (self.params if self.call_args is None else self.call_args, self.outs)]
    for args, outs in calls:
      call = f"{self.name}({', '.join(args)})"
      lines.append(f"{ind}{_tup(outs)} = {call}" if outs else ind + call)
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
class While:
  """``lax.while_loop`` over ``(index, *carry)`` while ``index < trips``."""
  name: str
  index: str
  trips: str            # an int expression (may read an int ref)
  carry: list
  body: list
  rets: list
  outs: list

  def emit(self, ind):
    lines = [f"{ind}def c{self.name}(s):",
             f"{ind}  return s[0] < {self.trips}",
             f"{ind}def {self.name}(s):",
             f"{ind}  {_tup([self.index] + self.carry)} = s"]
    lines += _emit_body(self.body, ind + "  ")
    lines.append(f"{ind}  return {_tup([self.index + ' + 1'] + self.rets)}")
    call = (f"lax.while_loop(c{self.name}, {self.name}, "
            f"{_tup(['jnp.int32(0)'] + self.carry)})")
    lines.append(f"{ind}{_tup(['_'] + self.outs)} = {call}")
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
  kind: Optional[str] = None  # jax.new_ref(..., kind=kind)


def _new_ref_src(r: RefDecl) -> str:
  kw = f", kind={r.kind!r}" if r.kind else ""
  return f"jax.new_ref({_array_src(r.value, r.dtype)}{kw})"


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
  grad_specs: Optional[tuple] = None  # per input "ref" | "value" | "dontwant":
                                      # also run the vjp_refs mode
  aliased: bool = False  # a ref reaches a remat twice: JAX's aliasing error
                         # from the remat run is an accepted outcome
  features: set = dataclasses.field(default_factory=set)  # ref_api.FEATURES

  def all_modes(self):
    return (("primal", "vjp") + (("jit_grad",) if self.jit_grad else ())
            + (("vjp_refs",) if self.grad_specs else ()))

  def copy(self):
    return copy.deepcopy(self)

  def source(self) -> str:
    closed = [r.name for r in self.refs if r.passing == "closure"]
    args = [r.name for r in self.refs if r.passing == "arg"]
    xs = [n for n, _ in self.inputs]
    out = [
        *source_header(f"seed {self.seed}", self.features),
        "",
        "CALLS = [0]",
        "",
        "",
        "def _cb(*args):",
        "  CALLS[0] += 1",
        "",
        "",
        *CUSTOM_FUNCTIONS_SRC,
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
      out.append(f"      {r.name!r}: {_new_ref_src(r)},")
    out += ["  }", "", ""]
    out.append("XS = (" + "".join(
        _array_src(v, "float32") + ", " for _, v in self.inputs) + ")")
    out.append(f"CLOSED_REFS = {tuple(closed)!r}")
    out.append(f"ARG_REFS = {tuple(args)!r}")
    modes = self.all_modes() if self.modes is None else self.modes
    out.append(f"MODES = {tuple(modes)!r}")
    out.append(f"GRAD_SPECS = {tuple(self.grad_specs or ())!r}")
    out.append(f"ALIASED = {self.aliased!r}")
    out.append(f"FEATURES = {tuple(sorted(self.features))!r}")
    out += HARNESS.splitlines()
    return "\n".join(out) + "\n"


def _array_src(v, dtype):
  v = np.asarray(v)
  conv = (lambda x: str(np.float32(x))) if dtype == "float32" else str

  def lit(x):
    if isinstance(x, list):
      return "[" + ", ".join(lit(e) for e in x) + "]"
    return conv(x)
  return f"np.array({lit(v.tolist())}, np.{dtype})"


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


def _grad_targets():
  """What `with_refs` gets per input (GRAD_SPECS): a ref holding 0.5 to
  accumulate into, `jax.ad.GradValue()` or `jax.ad.DontWant()`."""
  targets, grad_refs = [], {}
  for k, (spec, x) in enumerate(zip(GRAD_SPECS, XS)):
    if spec == "ref":
      grad_refs[f"g{k}"] = jax.new_ref(np.full(np.shape(x), 0.5, np.float32))
      targets.append(grad_refs[f"g{k}"])
    elif spec == "value":
      targets.append(jax.ad.GradValue())
    else:
      targets.append(jax.ad.DontWant())
  return targets, grad_refs


def run_vjp_refs(remat):
  # Gradients through `with_refs`, twice: the second call accumulates again.
  refs, f, args = _setup(remat)
  out, f_vjp = jax.vjp(lambda *xs: f(*xs, *args), *XS)
  targets, grad_refs = _grad_targets()
  ct = jax.tree.map(jnp.ones_like, out)
  first = f_vjp.with_refs(*targets)(ct)
  second = f_vjp.with_refs(*targets)(ct)
  return dict(out=out, grads=(first, second), refs=_contents(refs),
              refs_grad=_contents(grad_refs))


RUNNERS = dict(primal=run_primal, vjp=run_vjp, jit_grad=run_jit_grad,
               vjp_refs=run_vjp_refs)


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
  kind: bool = False    # kind "no_grad_no_remat": reads carry no gradient,
                        # writes of differentiated values are allowed
  referent: Optional[str] = None  # another name of the same ref (aliases)

  @property
  def ident(self):
    return self.referent or self.name

  @property
  def reads_diff(self):
    return self.diff and not self.kind

  def takes_diff(self, v: "Val"):
    """Whether `v` may be written without `lax.stop_gradient`."""
    return self.kind or (not self.external and (not v.diff or self.diff))


class Scope:
  def __init__(self, parent: Optional["Scope"] = None):
    self.vals = list(parent.vals) if parent else []
    self.refs = list(parent.refs) if parent else []
    self.idx = list(parent.idx) if parent else []        # int32 scalars
    self.remat_depth = parent.remat_depth if parent else 0
    self.ctrl_depth = parent.ctrl_depth if parent else 0
    self.jitted = parent.jitted if parent else False     # traced under jax.jit
    # Two names for one ref here (an aliased remat's body): jit blocks take
    # no ref parameters (jit raises on an aliased ref without remat too).
    self.has_aliases = parent.has_aliases if parent else False
    self.n_inherited = len(self.vals)

  def new_vals(self):
    return self.vals[self.n_inherited:]


class Generator:
  """Generates one `Program` from a seed."""

  def __init__(self, seed: int):
    self.seed = seed
    self.rng = random.Random(seed)
    self.counter = 0
    self.ckpt_names = []
    self.n_remat = 0
    self.features = set()
    self.alias_left = 0   # remats still to get an aliased ref

  def kind_kw(self, share=0.25):
    """``, kind=...`` for a share of new refs (where JAX has ref kinds); the
    random draw is made either way, so programs differ between JAX versions
    only in the features one of them lacks."""
    if self.rng.random() < share and ref_api.NO_GRAD_KIND:
      self.features.add("kind")
      return f", kind={ref_api.NO_GRAD_KIND!r}"
    return ""

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
    idx, idx_obj, shape = self.pick_index(scope, r)
    v = self.add_val(scope, shape, REF_BOUND, r.reads_diff)
    if self.rng.random() < 0.2 and ref_api.HAS_REF_GET_SET:
      self.features.add("ref_get")
      return [Line(f"{v.name} = jax.ref.get({r.name}, {idx_obj})")]
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

  def s_custom(self, scope):
    """A custom_vjp or custom_jvp function (defined in the program's
    preamble) that makes refs of its own, and whose rule differs from its
    primal's derivative: a remat that lost the rule would show."""
    a = self.pick_val(scope)
    v = self.add_val(scope, a.shape, 1.0, a.diff)
    self.features.add("custom_own_refs")
    fn = self.rng.choice(("_own_refs_vjp", "_own_refs_jvp"))
    return [Line(f"{v.name} = {fn}({a.name})")]

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
    # from values without gradients) only take values without gradients,
    # unless their kind allows it.
    if not ref.takes_diff(v) or self.rng.random() < 0.15:
      ex = f"lax.stop_gradient({ex})"
    elif ref.kind and v.diff:
      self.features.add("kind_diff_write")
    return ex

  def s_write(self, scope):
    refs = [r for r in scope.refs if r.dtype == "float32"]
    if not refs:
      return None
    r = self.rng.choice(refs)
    idx, idx_obj, shape = self.pick_index(scope, r)
    val = self._write_value(scope, r, shape)
    kind = self.rng.choices(("set", "iadd", "addupdate", "swap", "set_fn"),
                            (4, 3, 0.3 if r.external else 3, 1, 1))[0]
    if kind == "set_fn" and not ref_api.HAS_REF_GET_SET:
      kind = "set"
    if kind == "set":
      return [Line(f"{r.name}[{idx}] = {val}")]
    if kind == "iadd":
      return [Line(f"{r.name}[{idx}] += {val}")]
    self.features.add({"set_fn": "ref_set"}.get(kind, kind))
    if kind == "set_fn":
      return [Line(f"jax.ref.set({r.name}, {idx_obj}, {val})")]
    if kind == "addupdate":
      return [Line(f"jax.ref.addupdate({r.name}, {idx_obj}, {val})")]
    v = self.add_val(scope, shape, REF_BOUND, r.reads_diff)
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
    kw = self.kind_kw(0.2)
    q = RefV(self.fresh("q"), shape, "float32", external=False, diff=v.diff,
             kind=bool(kw))
    scope.refs.append(q)
    self.features.add("new_ref")
    if (scope.jitted and ref_api.HAS_EMPTY_REF and not kw
        and scope.ctrl_depth == 0 and self.rng.random() < 0.3):
      # Made empty, then written (jax.ref.empty_ref has no eager rule).
      self.features.add("empty_ref")
      return [Line(f"{q.name} = jax.ref.empty_ref(jax.typeof({ex}))"),
              Line(f"{q.name}[...] = {ex}")]
    # A kind ref made from a differentiated value: its reads take no
    # gradient (generator 1 runs reverse modes only; for jvp see
    # gen2.Generator.b_new_ref).
    if kw and v.diff and self.rng.random() < 0.5:
      self.features.add("kind_diff_init")
    elif kw:
      ex = f"lax.stop_gradient({ex})"
    return [Line(f"{q.name} = jax.new_ref({ex}{kw})")]

  # ---- compound statements ---------------------------------------------------

  def s_remat(self, scope, whole=False):
    if scope.remat_depth >= self.max_remat_depth:
      return None
    self.n_remat += 1
    name = self.fresh("blk")
    jit = self.rng.choices(("none", "inner", "outer"), (8, 1, 1))[0]
    call_args = None
    inner = Scope(scope)
    inner.remat_depth += 1
    if whole:
      params = [v.name for v in scope.vals] + [r.name for r in scope.refs]
      inner.jitted |= jit != "none"
      body = self.gen_body(inner, self.budget)
    else:
      vals = self.rng.sample(scope.vals, self.rng.randint(0, min(3, len(scope.vals))))
      refs = self.rng.sample(scope.refs, self.rng.randint(0, len(scope.refs)))
      params = [v.name for v in vals] + [r.name for r in refs]
      floats = [r for r in scope.refs if r.dtype == "float32"]
      pre = []
      if self.alias_left and floats:
        # A ref reaching the remat twice: passed twice, or closed over and
        # passed. No jit around it: jit rejects that without remat too.
        self.alias_left -= 1
        self.features.add("aliased")
        jit = "none"
        pre, alias_params, alias_args = self._aliases(inner, self.rng.choice(floats))
        params = [v.name for v in vals] + alias_params
        call_args = [v.name for v in vals] + alias_args
      if scope.has_aliases and jit != "none":
        params = [v.name for v in vals]
      inner.jitted |= jit != "none"
      body = pre + self.gen_body(inner, self.rng.randint(1, 5))
    new = inner.new_vals()
    if new and self.rng.random() < 0.2:
      body += self._sg_write_end(inner, self.rng.choice(new))
    k = self.rng.choice((0, 1, 1, 2, 2, 3)) if not whole else min(3, max(1, len(new)))
    rets = []
    for _ in range(k):
      pool = new if new and self.rng.random() < 0.85 else inner.vals
      rets.append(self.rng.choice(pool))
    outs = [self.add_val(scope, v.shape, v.bound, v.diff) for v in rets]
    policy = self.pick_policy()
    return [Remat(name, params, body, [v.name for v in rets],
                  [v.name for v in outs], policy, self.rng.random() < 0.5, jit,
                  call_args=call_args)]

  def _aliases(self, inner, r):
    """Parameters naming ref `r` inside a remat body `inner`: (first lines
    of the body, parameter names, argument names). Either two parameters
    both given `r`, or one given `r` while the body also closes over it; the
    first lines read through one name and write through the other."""
    a, b, params, args = alias_names(self.fresh, self.rng, inner, r)
    at = self._at(b)
    # What r reads, r takes (external refs read no gradient).
    val = f"jnp.tanh(jnp.sum({a.name}[...])) * 0.25"
    line = Line(f"{b.name}[{at}] = {b.name}[{at}] * 0.5 + {val}")
    return [line], params, args

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
    self.features.add("fori_static")
    return [Fori(name, index, self.rng.randint(1, 3), [c.name for c in carry],
                 body, rets, [v.name for v in outs])]

  def s_while(self, scope):
    """A `lax.while_loop`, or a `lax.fori_loop` whose trip count is traced
    (a while loop under tracing), reading and writing refs. JAX cannot
    reverse-differentiate a while loop, so nothing differentiated enters:
    the carries are `lax.stop_gradient` copies, the body sees no other
    values and only refs whose reads carry no gradient (external ones and
    kind refs)."""
    if scope.ctrl_depth >= 2 or not scope.vals:
      return None
    srcs = self.rng.sample(scope.vals, self.rng.randint(1, min(2, len(scope.vals))))
    pre, carry = [], []
    for v in srcs:
      c = self.add_val(scope, v.shape, v.bound)
      pre.append(Line(f"{c.name} = lax.stop_gradient({v.name})"))
      carry.append(c)
    index = self.fresh("i")
    inner = Scope(scope)
    inner.ctrl_depth += 1
    inner.idx.append(index)
    inner.vals = list(carry)
    inner.n_inherited = len(carry)
    inner.refs = [r for r in scope.refs
                  if r.dtype == "int32" or r.external or r.kind]
    irefs = [r for r in inner.refs if r.dtype == "int32"]
    k = self.rng.randint(1, 3)
    trips = str(k)
    if irefs and self.rng.random() < 0.5:
      ir = self.rng.choice(irefs)
      trips = f"{ir.name}[{'...' if ir.shape == () else 0}] % {k} + 1"
    form = "fori" if self.rng.random() < 0.35 else "while"
    if form == "while" and trips != str(k):
      # A ref the condition reads and the body uses reaches while_loop twice
      # (JAX raises its aliasing error outside jit, without remat).
      inner.refs = [r for r in inner.refs if r is not ir]
    body = []
    floats = [r for r in inner.refs if r.dtype == "float32" and r.shape]
    if floats and self.rng.random() < 0.7:   # a read-modify-write at the index
      r = self.rng.choice(floats)
      at = f"{index} % {r.shape[0]}"
      c = self.rng.choice(carry)
      ex, _ = self.adapt(c, ())
      body.append(Line(f"{r.name}[{at}] = {r.name}[{at}] * 0.5 + "
                       f"jnp.tanh({ex}) * 0.25"))
    body += self.gen_body(inner, self.rng.randint(1, 3))
    rets = [self._carry_update(inner, c) for c in carry]
    outs = [self.add_val(scope, c.shape, max(c.bound, 1.0)) for c in carry]
    name = self.fresh("wl")
    if form == "fori":
      self.features.add("fori_dynamic")
      if trips == str(k):  # traced wherever the carry is
        ex, _ = self.adapt(carry[0], ())
        trips = f"(jnp.sum({ex}) > 100.0).astype(jnp.int32) + {k}"
      return pre + [Fori(name, index, trips, [c.name for c in carry], body,
                         rets, [v.name for v in outs])]
    self.features.add("while_loop")
    return pre + [While(name, index, trips, [c.name for c in carry], body,
                        rets, [v.name for v in outs])]

  def s_tied(self, scope):
    """One remat-decorated function applied to several refs in turn (tied
    weights: ``h = blk(h, w0); h = blk(h, w1); h = blk(h, w1)``), the last
    one twice in a row."""
    if scope.remat_depth >= self.max_remat_depth:
      return None
    groups = {}
    for r in scope.refs:
      if r.dtype == "float32":
        groups.setdefault(r.shape, []).append(r)
    if not groups:
      return None
    group = max(groups.values(), key=len)
    passed = self.rng.sample(group, min(len(group), self.rng.randint(2, 3)))
    seq = passed + [passed[-1]]
    diff = [v for v in scope.vals if v.diff]
    h = self.rng.choice(diff[-4:]) if diff else self.pick_val(scope)
    self.n_remat += 1
    self.features.add("tied")
    name = self.fresh("tied")
    hp = Val(self.fresh("hp"), h.shape, max(h.bound, 1.0), True)
    wp = RefV(self.fresh("wp"), group[0].shape, "float32",
              external=any(r.external for r in passed),
              diff=all(r.diff for r in passed),
              kind=all(r.kind for r in passed))
    inner = Scope(scope)
    inner.remat_depth += 1
    gone = {r.ident for r in passed}
    inner.refs = [r for r in scope.refs if r.ident not in gone] + [wp]
    inner.vals.append(hp)
    jit = self.rng.choices(("none", "inner", "outer"), (6, 1, 1))[0]
    if scope.has_aliases:
      jit = "none"
    inner.jitted |= jit != "none"
    idx, _, shape = self.pick_index(inner, wp)
    rv = self.add_val(inner, shape, REF_BOUND, wp.reads_diff)
    body = [Line(f"{rv.name} = {wp.name}[{idx}]")]
    body += self.gen_body(inner, self.rng.randint(1, 3))
    if self.rng.random() < 0.7:   # each call updates its own ref
      at, _, wshape = self.pick_index(inner, wp)
      body.append(Line(f"{wp.name}[{at}] = "
                       f"{self._write_value(inner, wp, wshape)}"))
    ex, _ = self.adapt(self.pick_val(inner, prefer_new=0.9), h.shape)
    out = self.add_val(inner, h.shape, 1.0, True)
    body.append(Line(f"{out.name} = jnp.tanh({hp.name} * 0.5 + {ex})"))
    calls = []
    cur = h
    for w in seq:
      nxt = self.add_val(scope, h.shape, 1.0, True)
      calls.append(([cur.name, w.name], [nxt.name]))
      cur = nxt
    return [Remat(name, [hp.name, wp.name], body, [out.name], [cur.name],
                  self.pick_policy(), self.rng.random() < 0.5, jit, calls=calls)]

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
    if not r.takes_diff(h) or self.rng.random() < 0.3:
      ex = f"lax.stop_gradient({ex})"
    elif r.kind and h.diff:
      self.features.add("kind_diff_write")
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
    stmts, v = self._squashed(scope, h, expr, b, h.diff or r.reads_diff)
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
    if r.takes_diff(h) and (r.kind or r.diff) and self.rng.random() < 0.5:
      if r.kind and h.diff:
        self.features.add("kind_diff_write")
      return [Line(f"{r.name}[...] = jnp.cos({h.name}) + {r.name}[...] * 0.5")], h, r
    stmts = self._sg_write_end(scope, h)
    return (stmts, h, r) if stmts else None

  def m_new_ref(self, scope, h, r):
    kw = self.kind_kw(0.2)
    t = RefV(self.fresh("t"), h.shape, "float32", external=False, diff=h.diff,
             kind=bool(kw))
    self.features.add("new_ref")
    # How the ref ends: kept (later pieces may use it), frozen into its
    # value, freed after its last read; or made empty (inside jit only).
    end = self.rng.choices(("keep", "freeze", "free", "empty"), (5, 2, 1.5, 1.5))[0]
    # JAX itself (without remat) rejects free_ref of a kind ref under grad
    # (a Zero tangent into free_ref) and, under vjp, an empty_ref in a jit
    # inside a loop body ("returned a mutable array reference").
    if (end == "freeze" and not ref_api.HAS_FREEZE) or (
        end == "free" and not (ref_api.HAS_FREE_REF and not kw)) or (
            end == "empty" and not (scope.jitted and ref_api.HAS_EMPTY_REF
                                    and not kw and scope.ctrl_depth == 0)):
      end = "keep"
    if end == "empty":
      self.features.add("empty_ref")
      stmts = [Line(f"{t.name} = jax.ref.empty_ref(jax.typeof({h.name}))"),
               Line(f"{t.name}[...] = {h.name}")]
    else:
      init = h.name
      if kw and h.diff and self.rng.random() < 0.5:   # as s_new_ref
        self.features.add("kind_diff_init")
      elif kw:
        init = f"lax.stop_gradient({h.name})"
      stmts = [Line(f"{t.name} = jax.new_ref({init}{kw})")]
    stmts.append(
        Line(f"{t.name}[...] = {t.name}[...] * 2 + jnp.sin({t.name}[...])"))
    final = f"{t.name}[...]"
    if end == "freeze":
      self.features.add("freeze")
      final = f"jax.ref.freeze({t.name})"
    more, v = self._squashed(scope, h, final, 2 * h.bound + 1, t.reads_diff)
    if end == "free":
      self.features.add("free_ref")
      more.append(Line(f"jax.ref.free_ref({t.name})"))
    if end in ("freeze", "free"):
      return stmts + more, v, r
    scope.refs.append(t)
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
    out = self.add_val(scope, h.shape, 2 * REF_BOUND, h.diff or hh.diff or rr.reads_diff)
    trips = self.rng.randint(1, 3)
    if self.rng.random() < 0.6:
      self.features.add("fori_static")
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
    jit = "inner"
    if remat:
      inner.remat_depth += 1
      jit = self.rng.choices(("none", "inner", "outer"), (6, 1, 1))[0]
    inner.jitted |= jit != "none"
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
    if scope.has_aliases and jit != "none":
      refs = []
    params = [h.name] + [q.name for q in refs]
    out = self.add_val(scope, h.shape, hh.bound, hh.diff)
    if remat:
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
                name=2, stop=1, callback=2, write=7, write_int=2, new_ref=2,
                custom=0.7)
  COMPOUND = dict(remat=4, cond=2, fori=2, scan=2, motif=2, while_=1.5, tied=1)

  def gen_body(self, scope, n):
    stmts = []
    for _ in range(n):
      if self.budget <= 0:
        break
      table = dict(self.SIMPLE)
      if self.budget > 3:
        table.update(self.COMPOUND)
      kinds, weights = zip(*table.items())
      for _attempt in range(10):
        kind = self.rng.choices(kinds, weights)[0]
        got = getattr(self, "s_" + kind.rstrip("_"))(scope)
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
    # Loops, remats and jit blocks in motifs.
    self.motif_nodes = rng.randint(2, 6)
    self.last_motif = None
    jit = rng.random() < 0.15
    # A small share of programs hand one ref to a remat twice.
    self.alias_left = int(rng.random() < 0.15)
    tied = rng.random() < 0.12
    top = Scope()
    top.jitted = jit
    inputs = []
    for _ in range(rng.randint(1, 3)):
      shape = rng.choice(((), (n,)))
      v = self.add_val(top, shape, 1.5, diff=True)
      v.name = self.fresh("x")
      inputs.append((v.name, self.rand_values(shape)))
    refs = []
    n_float = rng.randint(1, 4)
    for k in range(n_float + 2 * tied):
      # Tied-weight programs get two more refs shaped (n,): layers.
      shape = rng.choice(((), (n,), (n,))) if k < n_float else (n,)
      name = self.fresh("r" if k < n_float else "w")
      kw = self.kind_kw(0.2)
      kind = ref_api.NO_GRAD_KIND if kw else None
      refs.append(RefDecl(name, "float32", self.rand_values(shape),
                          rng.choice(("arg", "closure")), kind))
      top.refs.append(RefV(name, shape, "float32", external=True,
                           kind=bool(kind)))
    if rng.random() < 0.4:
      shape = rng.choice(((), (n,)))
      name = self.fresh("ri")
      value = np.array([rng.randint(0, 5) for _ in range(int(np.prod(shape)))],
                       np.int32).reshape(shape)
      refs.append(RefDecl(name, "int32", value, rng.choice(("arg", "closure"))))
      top.refs.append(RefV(name, shape, "int32", external=True))

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
    else:
      body = self.gen_body(top, self.budget + 4)
    if tied and "tied" not in self.features:
      body += self.s_tied(top) or []
    if self.n_remat == 0:  # every program has a remat somewhere
      self.budget = 4
      body += self.s_remat(top)
    cands = [v for v in top.vals if v not in top.vals[:len(inputs)]] or top.vals
    recent = cands[-5:]
    outputs = [v.name for v in rng.sample(recent, rng.randint(1, min(3, len(recent))))]
    if self.last_motif is not None and self.last_motif.name not in outputs:
      outputs[0] = self.last_motif.name
    grad_specs = None
    if rng.random() < 0.25 and ref_api.HAS_WITH_REFS:
      grad_specs = [rng.choices(("ref", "value", "dontwant"), (6, 2.5, 1.5))[0]
                    for _ in inputs]
      grad_specs = ["ref" if (g == "value" and not ref_api.HAS_GRAD_VALUE) or
                    (g == "dontwant" and not ref_api.HAS_DONT_WANT) else g
                    for g in grad_specs]
      if "ref" not in grad_specs:
        grad_specs[0] = "ref"
      self.features.add("with_refs")
      self.features.update({"value": "grad_value", "dontwant": "dont_want"}[g]
                           for g in grad_specs if g != "ref")
      grad_specs = tuple(grad_specs)
    return Program(self.seed, inputs, refs, body, outputs, jit=jit,
                   jit_grad=rng.random() < 0.2, grad_specs=grad_specs,
                   aliased="aliased" in self.features,
                   features=set(self.features))


def generate(seed: int) -> Program:
  """The program of `seed`."""
  return Generator(seed).generate()
