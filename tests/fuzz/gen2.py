"""A second seeded generator: one state vector through a tree of blocks,
under one differentiation mode at a time.

Where `tests.fuzz.gen` draws SSA statements over many values, a program here
threads a single differentiated vector ``h`` (shape ``(n,)``) through a chain
of blocks -- remat and jit blocks (some remats only have effects),
`fori_loop`, `lax.scan` over ``(index, xs)`` reading and writing refs at the
scan index, `lax.switch`, `jax.vmap` of a function that reads refs, refs made
from ``h``, and remat inside a scan body inside a remat writing a ref made
outside -- then returns ``(loss, aux)``: a scalar loss and a tuple of ref
reads. Each program lists the modes it is checked under (`MODES`):

  * ``vg``: `jax.value_and_grad(..., has_aux=True)`;
  * ``vjp_write``: `jax.vjp`, then the program writes refs (`between`), then
    the vjp function runs;
  * ``linearize``: `jax.linearize`, maybe `between`, then the linear function;
  * ``jvp``: `jax.jvp`;
  * ``hessian``: `jax.hessian` of the loss; such programs never write refs
    made outside ``f`` (they close over read-only refs);
  * ``vjp_refs``: `jax.vjp`, then the vjp function's ``with_refs``, given
    per input a ref to accumulate into (holding 0.5), `jax.ad.GradValue()`
    or `jax.ad.DontWant()`, called twice; where JAX differentiates with
    respect to refs, some ref arguments of ``f`` are primals of the vjp too
    (``REF_PRIMALS``), their gradients accumulated into refs.

Ref features (see `tests.fuzz.ref_api`): refs of kind ``no_grad_no_remat``
(outside ``f`` and made inside; they take differentiated values without
`lax.stop_gradient`), a remat given one ref twice (or closing over a ref it
is also given; ``ALIASED``: JAX's aliasing error from the remat run is
accepted), one remat function applied to several layer refs in turn (tied
weights), and `lax.while_loop` / `lax.fori_loop` with a traced trip count
reading and writing refs (in programs differentiated in reverse or
linearized nothing differentiated enters them: JAX cannot transpose a while
loop, and its linearize of one replays the loop's effects).

``JIT_MODE`` puts `jax.jit` around ``f`` (``"f"``) or around the transformed
function (``"mode"``). The whole of ``f`` may be a remat too. A program
prints as standalone source like gen's (``build(remat, ...)``, ``RUNNERS``,
``MODES``), so `tests.fuzz.oracle.check_source` runs it: each mode on fresh
refs, without remat (the oracle) and with it; outputs, gradients / tangents /
hessians and the contents of every ref must agree.

Bounds: ``h`` carries a bound that each block updates; a block whose result
could exceed `SQUASH_AT` is followed by ``h = jnp.tanh(h)``, loop bodies end
no larger than they start. Values of ``h`` written to refs made outside ``f``
go through `lax.stop_gradient`; refs made from ``h`` inside ``f`` take
differentiated values.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Optional

import numpy as np

from tests.fuzz import oracle
from tests.fuzz import ref_api
from tests.fuzz.gen import _array_src, _new_ref_src, alias_names, source_header

# vjp_refs where the installed JAX's vjp function has `with_refs`.
MODES = ("vg", "vjp_write", "linearize", "jvp", "hessian") + (
    ("vjp_refs",) if ref_api.HAS_WITH_REFS else ())
REVERSE_MODES = ("vg", "vjp_write", "hessian", "vjp_refs")
POLICIES = (
    None,
    "jax.checkpoint_policies.nothing_saveable",
    "jax.checkpoint_policies.dots_saveable",
    "jax.checkpoint_policies.everything_saveable",
    "jax.checkpoint_policies.dots_with_no_batch_dims_saveable",
    "names",
)
SQUASH_AT = 4.0
REF_BOUND = 3.0      # assumed bound of a float ref read
COUNT_BOUND = 20.0   # assumed bound of a counter read
LOOP_BOUND = 2 * REF_BOUND  # loop carries are assumed this large on entry
HESSIAN_TOL = 1e-4


# --------------------------------------------------------------------------
# representation

@dataclasses.dataclass
class Node:
  """One block. ``kind``: "line" (``text`` is one statement), "remat", "jit",
  "fori", "scan", "switch", "vmap"; ``args`` holds the rest, ``kids`` the
  nested bodies (lists of nodes)."""
  kind: str
  text: str = ""
  name: str = ""
  args: dict = dataclasses.field(default_factory=dict)
  kids: list = dataclasses.field(default_factory=list)

  def emit(self, ind):
    return _EMIT[self.kind](self, ind)


def line(text):
  return Node("line", text=text)


def _emit_all(nodes, ind):
  out = []
  for n in nodes:
    out += n.emit(ind)
  return out


def _ckpt_kw(a):
  kw = []
  if a.get("policy") is not None:
    kw.append(f"policy={a['policy']}")
  kw.append(f"prevent_cse={a.get('prevent_cse', True)}")
  return ", ".join(kw)


def _emit_line(node, ind):
  return [ind + node.text]


def _emit_block(node, ind):
  """remat / jit: def, wrap, call; ``returns`` False: effects only."""
  a = node.args
  params = ", ".join(a["params"])
  out = [f"{ind}def {node.name}({params}):"]
  body = _emit_all(node.kids[0], ind + "  ")
  out += body
  if a["returns"]:
    out.append(f"{ind}  return h")
  elif not body:
    out.append(f"{ind}  pass")
  jit = a.get("jit", "none")
  if node.kind == "jit" or jit == "inner":
    out.append(f"{ind}{node.name} = jax.jit({node.name})")
  if node.kind == "remat":
    out.append(f"{ind}{node.name} = ckpt({node.name}, {_ckpt_kw(a)})")
  if jit == "outer":
    out.append(f"{ind}{node.name} = jax.jit({node.name})")
  # `calls`: argument lists of several calls (tied weights); `call`: the
  # arguments of the one call when they are not the parameters (aliasing).
  for args in a.get("calls") or [a.get("call") or a["params"]]:
    call = f"{node.name}({', '.join(args)})"
    out.append(f"{ind}h = {call}" if a["returns"] else ind + call)
  return out


def _wrap_body(node, ind):
  """The loop/map function, remat-wrapped when ``args['remat']``."""
  a = node.args
  if a.get("remat"):
    return [f"{ind}{node.name} = ckpt({node.name}, {_ckpt_kw(a)})"]
  return []


def _emit_fori(node, ind):
  a = node.args
  out = [f"{ind}def {node.name}({a['idx']}, h):"]
  out += _emit_all(node.kids[0], ind + "  ")
  out.append(f"{ind}  return h")
  out += _wrap_body(node, ind)
  out.append(f"{ind}h = lax.fori_loop(0, {a['trips']}, {node.name}, h)")
  return out


def _emit_while(node, ind):
  """A while loop (or a fori_loop with a traced trip count) on ``init``;
  its result ``hw`` is mixed into h."""
  a = node.args
  if a["form"] == "fori":
    out = [f"{ind}def {node.name}({a['idx']}, h):"]
  else:
    out = [f"{ind}def c{node.name}(s):", f"{ind}  return s[0] < {a['trips']}",
           f"{ind}def {node.name}(s):", f"{ind}  {a['idx']}, h = s"]
  out += _emit_all(node.kids[0], ind + "  ")
  if a["form"] == "fori":
    out.append(f"{ind}  return h")
    out.append(f"{ind}hw = lax.fori_loop(0, {a['trips']}, {node.name}, "
               f"{a['init']})")
  else:
    out.append(f"{ind}  return {a['idx']} + 1, h")
    out.append(f"{ind}_, hw = lax.while_loop(c{node.name}, {node.name}, "
               f"(jnp.int32(0), {a['init']}))")
  out.append(f"{ind}h = h * 0.5 + hw * 0.5")
  return out


def _emit_scan(node, ind):
  a = node.args
  c = a["carry"]
  out = [f"{ind}def {node.name}({c}, xs):"]
  if a["xs"] is None:
    out.append(f"{ind}  {a['idx']} = xs")
  else:
    out.append(f"{ind}  {a['idx']}, {a['xname']} = xs")
  out += _emit_all(node.kids[0], ind + "  ")
  out.append(f"{ind}  return {c}, {a['y']}")
  out += _wrap_body(node, ind)
  xs = f"jnp.arange({a['length']}, dtype=jnp.int32)"
  if a["xs"] is not None:
    xs = f"({xs}, {a['xs']})"
  out.append(f"{ind}{c}, {a['ys']} = lax.scan({node.name}, {a['init']}, {xs})")
  out += [ind + t for t in a.get("after", ())]
  return out


def _emit_switch(node, ind):
  a = node.args
  out = []
  names = []
  for k, body in enumerate(node.kids):
    names.append(f"{node.name}_{k}")
    out.append(f"{ind}def {names[-1]}(h):")
    out += _emit_all(body, ind + "  ")
    out.append(f"{ind}  return h")
  out.append(f"{ind}h = lax.switch({a['index']}, ({', '.join(names)},), h)")
  return out


def _emit_vmap(node, ind):
  a = node.args
  out = [f"{ind}def {node.name}(e):", f"{ind}  return {a['expr']}"]
  out += _wrap_body(node, ind)
  out.append(f"{ind}h = jax.vmap({node.name})(h)")
  return out


_EMIT = dict(line=_emit_line, remat=_emit_block, jit=_emit_block,
             fori=_emit_fori, scan=_emit_scan, switch=_emit_switch,
             vmap=_emit_vmap, while_=_emit_while)


def walk(nodes):
  for n in nodes:
    yield n
    for body in n.kids:
      yield from walk(body)


@dataclasses.dataclass
class RefDecl:
  name: str
  dtype: str            # "float32" | "int32"
  value: np.ndarray
  passing: str          # "arg" | "closure"
  kind: Optional[str] = None  # jax.new_ref(..., kind=kind)


@dataclasses.dataclass
class Program:
  seed: int
  n: int
  inputs: list          # (name, np.ndarray)
  tangents: list        # np.ndarray per input (jvp, linearize)
  refs: list            # RefDecl
  init: list            # lines computing h from the inputs
  body: list            # Node
  loss: str
  aux: list             # expressions
  modes: tuple
  jit_mode: str = "none"          # "none" | "f" | "mode"
  whole: Optional[dict] = None    # ckpt args when all of f is a remat
  between: list = dataclasses.field(default_factory=list)  # lines over R
  linearize_writes: bool = False  # run `between` in linearize mode too
  grad_specs: tuple = ()          # vjp_refs: per input "ref" | "value" | "dontwant"
  ref_primals: tuple = ()         # vjp_refs: arg refs differentiated too
  aliased: bool = False           # JAX's aliasing error from remat accepted
  features: set = dataclasses.field(default_factory=set)  # ref_api.FEATURES

  def n_remats(self):
    return (sum(1 for n in walk(self.body)
                if n.kind == "remat" or n.args.get("remat"))
            + (self.whole is not None))

  def source(self) -> str:
    closed = [r.name for r in self.refs if r.passing == "closure"]
    args = [r.name for r in self.refs if r.passing == "arg"]
    xs = [n for n, _ in self.inputs]
    out = [
        *source_header(f"gen2, seed {self.seed}", self.features),
        "",
        "",
        f"def build(remat{''.join(', ' + n for n in closed)}):",
        "  def ckpt(fun, **kw):",
        "    return jax.checkpoint(fun, **kw) if remat else fun",
        "",
        f"  def f({', '.join(xs + args)}):",
    ]
    out += ["    " + t for t in self.init]
    out += _emit_all(self.body, "    ")
    out.append(f"    loss = {self.loss}")
    out.append(f"    return loss, ({''.join(a + ', ' for a in self.aux)})")
    if self.whole is not None:
      out.append(f"  f = ckpt(f, {_ckpt_kw(self.whole)})")
    if self.jit_mode == "f":
      out.append("  f = jax.jit(f)")
    out += ["  return f", "", "", "def make_refs():", "  return {"]
    for r in self.refs:
      out.append(f"      {r.name!r}: {_new_ref_src(r)},")
    out += ["  }", "", "", "def between(R):",
            "  # Runs after the forward pass, before the vjp / linear function."]
    out += ["  " + t for t in self.between] or ["  pass"]
    out += ["", ""]
    out.append("XS = (" + "".join(
        _array_src(v, "float32") + ", " for _, v in self.inputs) + ")")
    out.append("TANGENTS = (" + "".join(
        _array_src(v, "float32") + ", " for v in self.tangents) + ")")
    out.append(f"CLOSED_REFS = {tuple(closed)!r}")
    out.append(f"ARG_REFS = {tuple(args)!r}")
    out.append(f"MODES = {tuple(self.modes)!r}")
    out.append(f"JIT_MODE = {self.jit_mode!r}")
    out.append(f"LINEARIZE_WRITES = {self.linearize_writes!r}")
    out.append(f"TOLERANCES = {{'hessian': {HESSIAN_TOL!r}}}")
    out.append(f"GRAD_SPECS = {tuple(self.grad_specs)!r}")
    out.append(f"REF_PRIMALS = {tuple(self.ref_primals)!r}")
    out.append(f"ALIASED = {self.aliased!r}")
    out.append(f"FEATURES = {tuple(sorted(self.features))!r}")
    out += HARNESS.splitlines()
    return "\n".join(out) + "\n"


HARNESS = '''
ARGNUMS = tuple(range(len(XS)))


def _setup(remat):
  refs = make_refs()
  f = build(remat, *[refs[k] for k in CLOSED_REFS])
  args = [refs[k] for k in ARG_REFS]
  return refs, (lambda *xs: f(*xs, *args))


def _contents(refs):
  jax.effects_barrier()
  return {k: np.asarray(r[...]) for k, r in refs.items()}


def _jit(fun):
  return jax.jit(fun) if JIT_MODE == "mode" else fun


def run_primal(remat):
  refs, g = _setup(remat)
  out = g(*XS)
  return dict(out=out, refs=_contents(refs))


def run_vg(remat):
  refs, g = _setup(remat)
  out, grads = _jit(jax.value_and_grad(g, argnums=ARGNUMS, has_aux=True))(*XS)
  return dict(out=out, grads=grads, refs=_contents(refs))


def run_vjp_write(remat):
  refs, g = _setup(remat)
  out, g_vjp = jax.vjp(g, *XS)
  seen = _contents(refs)
  between(refs)
  before = _contents(refs)
  grads = _jit(g_vjp)(jax.tree.map(jnp.ones_like, out))
  return dict(out=out, grads=grads, refs=seen, refs_before_bwd=before,
              refs_at_end=_contents(refs))


def run_linearize(remat):
  refs, g = _setup(remat)
  out, g_lin = jax.linearize(g, *XS)
  seen = _contents(refs)
  if LINEARIZE_WRITES:
    between(refs)
  before = _contents(refs)
  tangents = _jit(g_lin)(*TANGENTS)
  return dict(out=out, tangents=tangents, refs=seen, refs_before_bwd=before,
              refs_at_end=_contents(refs))


def run_jvp(remat):
  refs, g = _setup(remat)
  out, tangents = _jit(lambda xs, ts: jax.jvp(g, xs, ts))(XS, TANGENTS)
  return dict(out=out, tangents=tangents, refs=_contents(refs))


def run_hessian(remat):
  refs, g = _setup(remat)
  hess = _jit(jax.hessian(lambda *xs: g(*xs)[0], argnums=ARGNUMS))(*XS)
  return dict(hess=hess, refs=_contents(refs))


def run_vjp_refs(remat):
  # Gradients through `with_refs` (twice: the second call accumulates
  # again), for the inputs and for the arg refs in REF_PRIMALS.
  refs = make_refs()
  f = build(remat, *[refs[k] for k in CLOSED_REFS])
  n = len(XS)

  def g(*primals):
    given = dict(zip(REF_PRIMALS, primals[n:]))
    return f(*primals[:n], *[given.get(k, refs[k]) for k in ARG_REFS])
  out, g_vjp = jax.vjp(g, *XS, *[refs[k] for k in REF_PRIMALS])
  seen = _contents(refs)
  targets, grad_refs = [], {}
  for k, x in enumerate(XS + tuple(refs[k][...] for k in REF_PRIMALS)):
    spec = GRAD_SPECS[k] if k < n else "ref"
    if spec == "ref":
      grad_refs[f"g{k}"] = jax.new_ref(np.full(np.shape(x), 0.5, np.float32))
      targets.append(grad_refs[f"g{k}"])
    elif spec == "value":
      targets.append(jax.ad.GradValue())
    else:
      targets.append(jax.ad.DontWant())
  ct = jax.tree.map(jnp.ones_like, out)
  first = g_vjp.with_refs(*targets)(ct)
  second = g_vjp.with_refs(*targets)(ct)
  return dict(out=out, grads=(first, second), refs=seen,
              refs_at_end=_contents(refs), refs_grad=_contents(grad_refs))


RUNNERS = dict(primal=run_primal, vg=run_vg, vjp_write=run_vjp_write,
               linearize=run_linearize, jvp=run_jvp, hessian=run_hessian,
               vjp_refs=run_vjp_refs)


if __name__ == "__main__":
  for mode in MODES:
    for remat in (False, True):
      print(f"{mode:9s} remat={remat!s:5s}", RUNNERS[mode](remat))'''


# --------------------------------------------------------------------------
# generation

@dataclasses.dataclass
class Ref:
  name: str
  shape: tuple
  dtype: str            # "float32" | "int32"
  external: bool        # made outside f: writes of h need stop_gradient
  diff: bool = False    # made inside f, may hold differentiated values
  kind: bool = False    # kind "no_grad_no_remat": reads carry no gradient,
                        # writes of differentiated values are allowed
  primal: bool = False  # an arg ref the vjp_refs mode differentiates
  referent: Optional[str] = None  # another name of the same ref (aliases)

  @property
  def ident(self):
    return self.referent or self.name

  @property
  def takes_diff(self):
    """Whether h may be written without `lax.stop_gradient`."""
    return self.diff or self.kind

  @property
  def reads_diff(self):
    return (self.diff or self.primal) and not self.kind


class Ctx:
  """What a body sees: refs, loop indices, nesting depths. ``no_tangent``:
  a while-loop body where nothing differentiated may enter (programs
  differentiated in reverse or linearized; see `Generator.b_while`): only
  refs whose reads carry no gradient, no program inputs."""

  def __init__(self, parent: Optional["Ctx"] = None):
    self.refs = list(parent.refs) if parent else []
    self.idx = list(parent.idx) if parent else []
    self.remat_depth = parent.remat_depth if parent else 0
    self.ctrl_depth = parent.ctrl_depth if parent else 0
    self.read_only = parent.read_only if parent else False
    self.no_tangent = parent.no_tangent if parent else False
    # Two names for one ref here (an aliased remat's body): jit blocks take
    # no ref parameters (jit raises on an aliased ref without remat too).
    self.has_aliases = parent.has_aliases if parent else False

  def floats(self, vec=False):
    return [r for r in self.refs if r.dtype == "float32"
            and (not vec or r.shape != ())]

  def counters(self):
    return [r for r in self.refs if r.dtype == "int32"]

  def writable(self, refs):
    """Refs a body may write: all but external ones in read-only programs."""
    return [r for r in refs if not (self.read_only and r.external)]


class Generator:
  """Generates one `Program` from a seed. ``b_*`` methods make one block:
  (nodes, new bound of h), or None when the block does not fit here."""

  SIMPLE = dict(mix=6, write=4, count=2, new_ref=1.5)
  COMPOUND = dict(remat=5, jit=1.5, fori=2.5, scan=2.5, switch=2, vmap=2,
                  scan_remat=1.5, while_=1.5, tied=1)

  def __init__(self, seed: int):
    self.seed = seed
    self.rng = random.Random(seed)
    self.counter = 0
    self.names = []       # checkpoint names used
    self.features = set()
    self.alias_left = 0   # remats still to get an aliased ref
    self.no_tangent_loops = True   # while loops only on values without gradient

  def kind_kw(self, share):
    """``, kind=...`` for a share of new refs, where JAX has ref kinds (the
    draw is made either way)."""
    if self.rng.random() < share and ref_api.NO_GRAD_KIND:
      self.features.add("kind")
      return f", kind={ref_api.NO_GRAD_KIND!r}"
    return ""

  def _sg(self, r, val):
    """`val` (differentiated) as written into ref r."""
    if r.takes_diff:
      if r.kind:
        self.features.add("kind_diff_write")
      return val
    return f"lax.stop_gradient({val})"

  def fresh(self, prefix):
    self.counter += 1
    return f"{prefix}{self.counter}"

  def rand_values(self, shape, lo=-1.5, hi=1.5):
    v = np.round(np.array([self.rng.uniform(lo, hi)
                           for _ in range(int(np.prod(shape)))]), 3)
    return v.reshape(shape).astype(np.float32)

  def pick_policy(self):
    p = self.rng.choice(POLICIES)
    if p == "names":
      pool = self.names or ["n0"]
      picked = self.rng.sample(pool, self.rng.randint(1, min(2, len(pool))))
      p = ("jax.checkpoint_policies.save_only_these_names("
           + ", ".join(repr(q) for q in picked) + ")")
    return p

  def ckpt_args(self):
    return dict(policy=self.pick_policy(), prevent_cse=self.rng.random() < 0.5)

  def _at(self, r, ctx, loop_ok=True):
    """An index into ref r: whole for scalars, else a constant or `i % n`."""
    if r.shape == ():
      return "..."
    if loop_ok and ctx.idx and self.rng.random() < 0.6:
      return f"{self.rng.choice(ctx.idx)} % {r.shape[0]}"
    return str(self.rng.randrange(r.shape[0]))

  def _fit(self, expr, shape):
    """`expr` (shaped like h) adapted to a ref of `shape`."""
    return expr if shape else f"jnp.sum({expr})"

  def squash(self, nodes, b):
    if b > SQUASH_AT:
      nodes.append(line(f"h = {self.rng.choice(('jnp.tanh', 'jnp.sin'))}(h)"))
      return 1.0
    return b

  # ---- simple blocks: (nodes, new bound) -------------------------------------

  def b_mix(self, ctx, b):
    floats = ctx.floats()
    opts = ["tanh", "dot", "name"] + (["sinr", "elem", "sinr"] if floats else [])
    opts += ["count"] if ctx.counters() else []
    opts += ["loop_read"] if ctx.idx and ctx.floats(vec=True) else []
    kind = self.rng.choice(opts)
    n = self.n
    if kind == "tanh":
      text, b = "h = jnp.tanh(h * 1.3 + 0.1)", 1.0
    elif kind == "dot":
      text, b = "h = jnp.sin(h) + jnp.dot(h, h) * 0.1", 1 + 0.1 * n * b * b
    elif kind == "name":
      nm = self.fresh("n")
      self.names.append(nm)
      text = f"h = checkpoint_name(h, {nm!r})"
    elif kind == "sinr":
      r = self.rng.choice(floats)
      text, b = f"h = jnp.sin(h) * {r.name}[...] + h * 0.5", REF_BOUND + 0.5 * b
    elif kind == "elem":
      r = self.rng.choice(floats)
      text, b = f"h = h * {r.name}[{self._at(r, ctx)}]", b * REF_BOUND
    elif kind == "count":
      c = self.rng.choice(ctx.counters())
      text = f"h = h + {c.name}[{self._at(c, ctx)}].astype(jnp.float32) * 0.1"
      b = b + 0.1 * COUNT_BOUND
    else:
      r = self.rng.choice(ctx.floats(vec=True))
      text = f"h = h + {r.name}[{self.rng.choice(ctx.idx)} % {r.shape[0]}] * 0.25"
      b = b + 0.25 * REF_BOUND
    nodes = [line(text)]
    return nodes, self.squash(nodes, b)

  def b_write(self, ctx, b):
    refs = ctx.writable(ctx.floats())
    if not refs:
      return None
    r = self.rng.choice(refs)
    opts = ["add", "decay", "elem", "sg"]
    if r.shape and r.shape[0] > 1:
      opts.append("shift")
    if ctx.idx and r.shape:
      opts += ["loop", "loop"]
    if r.takes_diff:
      opts += ["diff", "diff"]
    kind = self.rng.choice(opts)
    nm = r.name
    if kind == "add":
      text = f"{nm}[...] += {self.rng.choice(('1.0', '0.5', '0.25'))}"
      if ctx.idx:  # keep refs bounded over loop trips
        text = f"{nm}[...] = {nm}[...] * 0.5 + 0.5"
    elif kind == "decay":
      text = f"{nm}[...] = {nm}[...] * 0.5 + {self.rng.choice(('0.25', '-0.5', '1.0'))}"
    elif kind == "elem":
      at = self._at(r, ctx)
      text = f"{nm}[{at}] = {nm}[{at}] * 0.5 + 0.25"
    elif kind == "shift":
      text = f"{nm}[1:] = {nm}[:-1] * 0.5 + 0.25"
    elif kind == "loop":
      at = f"{self.rng.choice(ctx.idx)} % {r.shape[0]}"
      text = f"{nm}[{at}] = {nm}[{at}] + 0.125"
    elif kind == "diff":   # a differentiated value into a ref made from h
      text = (f"{nm}[...] = {nm}[...] * 0.5 + "
              f"{self._sg(r, self._fit('jnp.sin(h)', r.shape))} * 0.5")
    else:
      val = f"jnp.cos({self._fit('h', r.shape)})"
      val = (self._sg(r, val) if self.rng.random() < 0.5
             else f"lax.stop_gradient({val})")
      text = f"{nm}[...] = {val} + {nm}[...] * 0.5"
    return [line(text)], b

  def b_count(self, ctx, b):
    cs = ctx.writable(ctx.counters())
    if not cs:
      return None
    c = self.rng.choice(cs)
    return [line(f"{c.name}[{self._at(c, ctx)}] += 1")], b

  def b_new_ref(self, ctx, b):
    if ctx.read_only:  # hessian: JAX without remat fails on most of these
      return None
    if ctx.no_tangent:
      # JAX (without remat) rejects a ref made in a while body inside a loop
      # body under grad: "set/swap ... differentiated value on a
      # non-differentiated array reference".
      return None
    kw = self.kind_kw(0.2)
    t = Ref(self.fresh("t"), (self.n,), "float32", external=False, diff=True,
            kind=bool(kw))
    self.features.add("new_ref")
    # Under jvp a kind ref starts from a value without gradient: JAX's jvp
    # (not its linearize or grad) gives such a ref made from a
    # differentiated value a tangent that its writes then leave stale,
    # without remat. Under the other modes half of them do not.
    init = "h"
    if kw and "jvp" not in self.modes and self.rng.random() < 0.5:
      self.features.add("kind_diff_init")
    elif kw:
      init = "lax.stop_gradient(h)"
    nodes = [line(f"{t.name} = jax.new_ref({init}{kw})"),
             line(f"{t.name}[...] = {t.name}[...] * 2 + jnp.sin({t.name}[...])")]
    if kw:   # reads of a kind ref carry no gradient: h keeps its own
      nodes.append(line(f"h = h * 0.5 + {t.name}[...] * 0.5"))
      bound = 1.5 * b + 0.5
    else:
      nodes.append(line(f"h = {t.name}[...]"))
      bound = 2 * b + 1
    if self.rng.random() < 0.6:
      ctx.refs.append(t)   # later blocks of this body may use it
    return nodes, self.squash(nodes, bound)

  # ---- compound blocks ---------------------------------------------------------

  def b_remat(self, ctx, b, jit=False):
    inner = Ctx(ctx)
    if not jit:
      inner.remat_depth += 1
    name = self.fresh("jb" if jit else "blk")
    writes = ctx.writable(ctx.refs)
    effect_only = not jit and writes and self.rng.random() < 0.2
    if effect_only:
      # Only effects, as in `remat(lambda a: a.__setitem__(..., a[...] + 1.))`.
      body = []
      for _ in range(self.rng.randint(1, 2)):
        r = self.rng.choice(writes)
        if r.dtype == "int32":
          body.append(line(f"{r.name}[...] += 1"))
        else:
          body.append(line(f"{r.name}[...] = {r.name}[...] + 1.0" if not ctx.idx
                           else f"{r.name}[...] = {r.name}[...] * 0.5 + 1.0"))
      params = sorted({ln.text.split("[")[0] for ln in body}) \
          if self.rng.random() < 0.7 else []
      args = dict(params=params, returns=False)
    else:
      pre, alias_params, alias_args = [], [], []
      if not jit and self.alias_left and ctx.floats():
        self.alias_left -= 1
        self.features.add("aliased")
        pre, alias_params, alias_args, b = self._aliases(
            inner, self.rng.choice(ctx.floats()), b)
      body, b = self.gen_chain(inner, self.rng.randint(1, 3), b)
      body = pre + body
      refs = [n for n in dict.fromkeys(r.name for r in ctx.refs)
              if self.rng.random() < 0.3]
      args = dict(params=["h"] + alias_params + refs, returns=True)
      if alias_args:
        args["call"] = ["h"] + alias_args + refs
    if not jit:
      args.update(self.ckpt_args())
      args["jit"] = self.rng.choices(("none", "inner", "outer"), (6, 1, 1))[0]
      if "call" in args:   # jit rejects an aliased ref without remat too
        args["jit"] = "none"
    if ctx.has_aliases and (jit or args.get("jit", "none") != "none"):
      args["params"] = [p for p in args["params"] if p == "h"]
    return [Node("jit" if jit else "remat", name=name, args=args, kids=[body])], b

  def _aliases(self, inner, r, b):
    """Parameters naming ref r in a remat body `inner`: two both given r,
    or one given r while the body closes over r too. Returns (first nodes
    of the body, parameter names, argument names, bound of h): the first
    nodes read r through one name and write (or read) it through the other."""
    a, c, params, args = alias_names(self.fresh, self.rng, inner, r)
    at = self._at(c, inner, loop_ok=False)
    # What r reads, r takes (a differentiated read only where r itself is
    # differentiated: made from h, or a primal of vjp_refs).
    val = f"jnp.tanh(jnp.sum({a.name}[...])) * 0.25"
    if inner.writable([r]):
      return ([line(f"{c.name}[{at}] = {c.name}[{at}] * 0.5 + {val}")],
              params, args, b)
    return ([line(f"h = h + {val} * {c.name}[{at}]")], params, args,
            b + 0.25 * REF_BOUND)

  def b_tied(self, ctx, b):
    """One remat function applied to several layer refs in turn, the last
    twice in a row (tied weights): ``h = blk(h, w0); h = blk(h, w1); ...``."""
    n = self.n
    vecs = [r for r in ctx.floats(vec=True) if r.shape == (n,)]
    if not vecs or ctx.remat_depth >= 2:
      return None
    self.features.add("tied")
    passed = self.rng.sample(vecs, min(len(vecs), self.rng.randint(2, 3)))
    w = Ref(self.fresh("wp"), (n,), "float32",
            external=any(r.external for r in passed),
            diff=all(r.diff for r in passed), kind=all(r.kind for r in passed),
            primal=any(r.primal for r in passed))
    inner = Ctx(ctx)
    inner.remat_depth += 1
    gone = {r.ident for r in passed}
    inner.refs = [r for r in ctx.refs if r.ident not in gone] + [w]
    body = [line(f"h = jnp.sin(h) * {w.name}[...] + h * 0.5")]
    self._loop_body(inner, body, self.rng.randint(0, 2))
    if inner.writable([w]) and self.rng.random() < 0.7:   # each call its own
      val = "jnp.cos(h) * 0.25"
      val = (f"lax.stop_gradient({val})" if self.rng.random() < 0.5
             else self._sg(w, val))
      body.append(line(f"{w.name}[...] = {w.name}[...] * 0.5 + {val}"))
    calls = [["h", r.name] for r in passed + [passed[-1]]]
    jit = self.rng.choices(("none", "inner", "outer"), (6, 1, 1))[0]
    args = dict(params=["h", w.name], calls=calls, returns=True,
                jit="none" if ctx.has_aliases else jit, **self.ckpt_args())
    return [Node("remat", name=self.fresh("tied"), args=args, kids=[body])], \
        LOOP_BOUND

  def b_while(self, ctx, b):
    """A `lax.while_loop`, or a `lax.fori_loop` with a traced trip count,
    over a copy of h, reading and writing refs; the result is mixed into h.
    In programs differentiated in reverse or linearized the copy is a
    `lax.stop_gradient` and the body sees only refs whose reads carry no
    gradient: JAX cannot transpose a while loop, and its linearize of one
    with differentiated carries replays the loop's ref writes in the linear
    function (without remat). Only jvp-only programs carry h itself."""
    if ctx.ctrl_depth >= 2:
      return None
    n = self.n
    inner = Ctx(ctx)
    inner.ctrl_depth += 1
    idx = self.fresh("i")
    inner.idx.append(idx)
    if self.no_tangent_loops:
      inner.no_tangent = True
      inner.refs = [r for r in ctx.refs if not r.reads_diff]
    k = self.rng.randint(1, 3)
    trips = str(k)
    counters = ctx.counters()
    if counters and self.rng.random() < 0.5:
      c = self.rng.choice(counters)
      trips = f"{c.name}[{'...' if c.shape == () else 0}] % {k} + 1"
    form = "fori" if self.rng.random() < 0.35 else "while"
    if form == "while" and trips != str(k):
      # A ref the condition reads and the body uses reaches while_loop twice
      # (JAX raises its aliasing error outside jit, without remat).
      inner.refs = [r for r in inner.refs if r.ident != c.ident]
    body = []
    vecs = inner.writable([r for r in inner.floats(vec=True) if r.shape == (n,)])
    if vecs and self.rng.random() < 0.7:   # a read-modify-write at the index
      r = self.rng.choice(vecs)
      at = f"{idx} % {n}"
      val = f"jnp.tanh(h[{self.rng.randrange(n)}]) * 0.25"
      if not self.no_tangent_loops:
        val = self._sg(r, val)
      body.append(line(f"{r.name}[{at}] = {r.name}[{at}] * 0.5 + {val}"))
    self._loop_body(inner, body, self.rng.randint(1, 2))
    if form == "fori":
      self.features.add("fori_dynamic")
      if trips == str(k):   # traced wherever h is
        trips = f"(jnp.sum(h) > 100.0).astype(jnp.int32) + {k}"
    else:
      self.features.add("while_loop")
    init = "lax.stop_gradient(h)" if self.no_tangent_loops else "h"
    args = dict(idx=idx, trips=trips, form=form, init=init)
    return [Node("while_", name=self.fresh("wl"), args=args, kids=[body])], \
        (b + LOOP_BOUND) / 2

  def b_jit(self, ctx, b):
    return self.b_remat(ctx, b, jit=True)

  def _loop_body(self, inner, nodes, k):
    """Extends a loop body so that it ends no larger than `LOOP_BOUND`."""
    more, b = self.gen_chain(inner, k, LOOP_BOUND)
    nodes += more
    if b > LOOP_BOUND:
      nodes.append(line("h = jnp.tanh(h)"))
    return nodes

  def _remat_arg(self, args):
    if self.rng.random() < 0.3:
      args["remat"] = True
      args.update(self.ckpt_args())
    return args

  def b_fori(self, ctx, b):
    inner = Ctx(ctx)
    inner.ctrl_depth += 1
    idx = self.fresh("i")
    inner.idx.append(idx)
    body = []
    vecs = inner.writable(inner.floats(vec=True))
    if vecs and self.rng.random() < 0.6:
      r = self.rng.choice(vecs)
      at = f"{idx} % {r.shape[0]}"
      body.append(line(f"{r.name}[{at}] = {r.name}[{at}] + 0.125"))
    self._loop_body(inner, body, self.rng.randint(1, 3))
    if inner.floats() and self.rng.random() < 0.5:
      r = self.rng.choice(inner.floats())
      body.append(line(f"h = jnp.sin(h) * {r.name}[...] + h * 0.5"))
    args = self._remat_arg(dict(idx=idx, trips=self.rng.randint(1, 3)))
    self.features.add("fori_static")
    return [Node("fori", name=self.fresh("loop"), args=args, kids=[body])], \
        max(b, LOOP_BOUND)

  def b_scan(self, ctx, b):
    """`lax.scan` over (index, xs): reads and writes a ref at the index."""
    n = self.n
    vecs = [r for r in ctx.floats(vec=True) if r.shape == (n,)]
    if not vecs:
      return None
    r = self.rng.choice(vecs)
    inner = Ctx(ctx)
    inner.ctrl_depth += 1
    idx, x = self.fresh("i"), self.fresh("x")
    inner.idx.append(idx)
    vec_inputs = [nm for nm, v in self.inputs if v.shape == (n,)
                  and not ctx.no_tangent]
    src = self.rng.choice(["jnp.cos(h)", "h * 0.5"] + vec_inputs
                          + [f"{q.name}[...]" for q in vecs])
    body = []
    if not inner.read_only or not r.external:
      val = (self._sg(r, x) if (r.takes_diff and self.rng.random() < 0.5)
             else f"lax.stop_gradient({x})")
      body.append(line(f"{r.name}[{idx}] = {r.name}[{idx}] * 0.5 + {val}"))
    body.append(line(f"h = jnp.sin(h) * {r.name}[{idx}] + {x} * 0.5"))
    if self.rng.random() < 0.5:
      self._loop_body(inner, body, 1)
    ys = self.fresh("ys")
    after = [f"h = jnp.tanh(h + {ys})"]
    outs = inner.writable([q for q in ctx.floats(vec=True) if q.shape == (n,)])
    if outs and self.rng.random() < 0.4:
      q = self.rng.choice(outs)
      val = f"jnp.tanh({ys})"
      val = (f"lax.stop_gradient({val})" if self.rng.random() < 0.5
             else self._sg(q, val))
      after.insert(0, f"{q.name}[...] = {val}")
    args = self._remat_arg(dict(carry="h", init="h", idx=idx, xname=x, xs=src,
                                length=n, y=f"{r.name}[{idx}] * {x}", ys=ys,
                                after=after))
    return [Node("scan", name=self.fresh("scan"), args=args, kids=[body])], 1.0

  def b_switch(self, ctx, b):
    if ctx.read_only:  # hessian: JAX has no vmap of a cond with ref effects
      return None
    k = self.rng.choice((2, 2, 3))
    opts = [f"jnp.int32({self.rng.randrange(k)})",
            f"(jnp.sum(h) > 0).astype(jnp.int32) % {k}"]
    for c in ctx.counters():
      opts += [f"{c.name}[{'...' if c.shape == () else 0}] % {k}"] * 2
    for i in ctx.idx:
      opts.append(f"({i} + 1) % {k}")
    index = self.rng.choice(opts)
    kids = []
    bound = 0.0
    for _ in range(k):
      inner = Ctx(ctx)
      inner.ctrl_depth += 1
      body, bb = self.gen_chain(inner, self.rng.randint(1, 2), b)
      kids.append(body)
      bound = max(bound, bb)
    return [Node("switch", name=self.fresh("br"), args=dict(index=index),
                 kids=kids)], bound

  def b_vmap(self, ctx, b):
    """`jax.vmap` over the elements of h; the function only reads refs."""
    floats = ctx.floats()
    opts = [("jnp.sin(e) * 0.5 + jnp.tanh(e)", 1.5)]
    for r in floats:
      at = "..." if r.shape == () else str(self.rng.randrange(r.shape[0]))
      opts += [(f"jnp.sin(e) * {r.name}[{at}] + e * 0.5", REF_BOUND + 0.5 * b),
               (f"jnp.tanh(e * jnp.sum({r.name}[...]))", 1.0)]
      if r.shape:
        opts.append((f"jnp.sum(jnp.sin(e * {r.name}[...])) * 0.3", 0.3 * r.shape[0]))
    for c in ctx.counters():
      at = "..." if c.shape == () else "0"
      opts.append((f"jnp.sin(e) + {c.name}[{at}].astype(jnp.float32) * 0.05", 2.0))
    expr, bound = self.rng.choice(opts)
    args = self._remat_arg(dict(expr=expr))
    nodes = [Node("vmap", name=self.fresh("vf"), args=args)]
    return nodes, self.squash(nodes, bound)

  def b_scan_remat(self, ctx, b):
    """A remat holding a scan whose (remat) body writes a ref made outside,
    closing over the remat's differentiated argument."""
    if ctx.read_only or ctx.remat_depth >= 2 or ctx.no_tangent:
      return None   # no_tangent: see b_new_ref
    n = self.n
    nodes = []
    ext = [r for r in ctx.floats(vec=True) if r.shape == (n,)]
    if ext and self.rng.random() < 0.3:
      t = self.rng.choice(ext)
    else:
      t = Ref(self.fresh("t"), (n,), "float32", external=False, diff=True)
      # From zeros as in the examples; inside loops and branches only from h:
      # JAX without remat mis-differentiates a ref made from a constant in a
      # loop body and written with a differentiated value.
      zeros = ctx.ctrl_depth == 0 and self.rng.random() < 0.7
      init = f"jnp.zeros(({n},), jnp.float32)" if zeros else \
          self.rng.choice(("jnp.tanh(h)", "h * 0.0"))
      nodes.append(line(f"{t.name} = jax.new_ref({init})"))
    outer = Ctx(ctx)
    outer.remat_depth += 1
    outer.refs.append(t)
    step = Ctx(outer)
    step.ctrl_depth += 1
    step.remat_depth += 1
    idx = self.fresh("i")
    step.idx.append(idx)
    at = self.rng.choice((f"{idx} % {n}", str(self.rng.randrange(n))))
    val = self._sg(t, f"h[{self.rng.randrange(n)}] * 0.5")
    body = [line(f"{t.name}[{at}] += {val}")]
    if self.rng.random() < 0.5:
      body.append(line(f"c = jnp.sin(c + {t.name}[{idx} % {n}])"))
    length = self.rng.randint(1, 3)
    scan = Node("scan", name=self.fresh("step"), kids=[body], args=dict(
        carry="c", init="0.", idx=idx, xs=None, length=length, y="()", ys="_",
        remat=True, **self.ckpt_args()))
    obody = []
    if self.rng.random() < 0.4:
      more, _ = self.gen_chain(outer, 1, b)
      obody += more
    obody += [scan, line(f"h = jnp.tanh({t.name}[...] * {t.name}[...] + h + c)")]
    params = ["h", t.name] if self.rng.random() < 0.6 else ["h"]
    args = dict(params=params, returns=True, jit="none", **self.ckpt_args())
    nodes.append(Node("remat", name=self.fresh("blk"), args=args, kids=[obody]))
    if not t.external:
      ctx.refs.append(t)
    return nodes, 1.0

  # ---- chains and programs -------------------------------------------------

  def gen_chain(self, ctx, k, b):
    nodes = []
    for _ in range(k):
      table = dict(self.SIMPLE)
      if self.compound > 0:
        table.update(self.COMPOUND)
        if ctx.ctrl_depth >= 2:
          for kind in ("fori", "scan", "switch", "scan_remat", "while_"):
            del table[kind]
        if ctx.remat_depth >= 3:
          del table["remat"]
      kinds, weights = zip(*table.items())
      for _attempt in range(10):
        kind = self.rng.choices(kinds, weights)[0]
        compound = kind in self.COMPOUND
        self.compound -= compound   # before nesting: bounds the whole tree
        got = getattr(self, "b_" + kind.rstrip("_"))(ctx, b)
        if got is not None:
          break
        self.compound += compound
      else:
        continue
      more, b = got
      nodes += more
    return nodes, b

  def generate(self) -> Program:
    rng = self.rng
    self.n = n = rng.choice((2, 3, 3, 4))
    self.compound = rng.randint(2, 5)
    modes = [rng.choice(MODES)]
    if rng.random() < 0.35:
      modes.append(rng.choice([m for m in MODES if m not in modes]))
    modes.sort(key=MODES.index)
    self.modes = modes
    read_only = "hessian" in modes
    # Where nothing differentiated may enter a while loop: reverse modes
    # (JAX cannot transpose one) and linearize (JAX's linearize of a while
    # loop with differentiated carries replays its ref effects in the linear
    # function, without remat).
    self.no_tangent_loops = any(m in REVERSE_MODES + ("linearize",) for m in modes)
    # A small share of programs hand one ref to a remat twice; some apply
    # one remat function to layer refs (tied weights).
    self.alias_left = int(rng.random() < 0.12)
    tied = rng.random() < 0.12
    ref_primals = "vjp_refs" in modes and ref_api.vjp_takes_ref_primals()

    self.inputs = inputs = []
    for k in range(rng.randint(1, 3)):
      shape = (n,) if k == 0 or rng.random() < 0.5 else ()
      inputs.append((self.fresh("x"), self.rand_values(shape)))
    tangents = [self.rand_values(v.shape, -1.0, 1.0) for _, v in inputs]
    refs = []
    top = Ctx()
    top.read_only = read_only
    for k in range(rng.randint(1, 3)):
      if k > 0 and rng.random() < 0.35:
        shape = rng.choice(((), (n,)))
        value = np.array([rng.randint(0, 4) for _ in range(int(np.prod(shape)))],
                         np.int32).reshape(shape)
        ref = Ref(self.fresh("c"), shape, "int32", external=True)
        refs.append(RefDecl(ref.name, "int32", value, rng.choice(("arg", "closure"))))
      else:
        shape = (n,) if k == 0 or rng.random() < 0.7 else ()
        kw = self.kind_kw(0.2)
        ref = Ref(self.fresh("r"), shape, "float32", external=True, kind=bool(kw))
        refs.append(RefDecl(ref.name, "float32", self.rand_values(shape),
                            rng.choice(("arg", "closure")),
                            ref_api.NO_GRAD_KIND if kw else None))
      top.refs.append(ref)
    for _ in range(2 * tied):   # layers
      kw = self.kind_kw(0.2)
      ref = Ref(self.fresh("w"), (n,), "float32", external=True, kind=bool(kw))
      refs.append(RefDecl(ref.name, "float32", self.rand_values((n,)),
                          rng.choice(("arg", "closure")),
                          ref_api.NO_GRAD_KIND if kw else None))
      top.refs.append(ref)
    # vjp_refs: some float arg refs are primals of the vjp as well.
    primals = []
    for ref, decl in zip(top.refs, refs):
      if (rng.random() < 0.5 and ref_primals and decl.passing == "arg"
          and ref.dtype == "float32" and not ref.kind):
        ref.primal = True
        primals.append(ref.name)
    if primals:
      self.features.add("ref_primal")

    init = []
    for k, (nm, v) in enumerate(inputs):
      ex = nm if v.shape else f"{nm} * jnp.ones({n}, jnp.float32)"
      init.append(f"h = {ex}" if k == 0 else
                  f"h = h {rng.choice(('+', '*'))} jnp.sin({ex})")
    b = 1.5 + len(inputs) - 1

    if read_only:
      shape = rng.choices(("chain", "hessian"), (0.6, 0.4))[0]
    else:
      shape = rng.choices(("chain", "effects", "scan_remat"), (0.76, 0.12, 0.12))[0]
    whole = None
    if shape == "effects":
      # An effects-only remat inside a remat around all of f, as in
      # value_and_grad(remat(f)) with f calling remat(lambda a: a[...] += 1).
      r = top.floats()[0]
      body = [Node("remat", name=self.fresh("blk"), kids=[[line(
          f"{r.name}[...] = {r.name}[...] + 1.0")]], args=dict(
              params=[r.name] if rng.random() < 0.7 else [], returns=False,
              jit="none", **self.ckpt_args()))]
      whole = self.ckpt_args()
    elif shape == "scan_remat":
      body, b = self.b_scan_remat(top, b)
      if rng.random() < 0.5:
        more, b = self.gen_chain(top, 1, b)
        body += more
    elif shape == "hessian":
      # A remat around a small function of x reading refs, e.g.
      # hessian(remat(lambda x: jnp.sum(r[...] * x * x) * r[1])).
      body, b = self.gen_chain(top, rng.randint(0, 1), b)
      whole = self.ckpt_args()
    else:
      body, b = self.gen_chain(top, rng.randint(2, 5), b)
      if rng.random() < 0.25:
        whole = self.ckpt_args()
    if tied and "tied" not in self.features:
      got = self.b_tied(top, b)
      if got is not None:
        body += got[0]
        b = got[1]
        body.append(line("h = jnp.tanh(h)"))
    grad_specs = ()
    if "vjp_refs" in modes:
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
    program = Program(self.seed, n, inputs, tangents, refs, init, body,
                      self._loss(top), self._aux(top), tuple(modes),
                      jit_mode=rng.choices(("none", "f", "mode"), (5, 2, 2))[0],
                      whole=whole, grad_specs=tuple(grad_specs),
                      ref_primals=tuple(primals),
                      aliased="aliased" in self.features,
                      features=self.features)
    if program.n_remats() == 0:
      program.whole = self.ckpt_args()
    if "vjp_write" in modes or "linearize" in modes:
      program.between = self._between(refs)
      program.linearize_writes = rng.random() < 0.6
    return program

  def _loss(self, ctx):
    floats = ctx.floats()
    ext = [r for r in floats if r.external]
    opts = ["jnp.sum(jnp.sin(h))", "jnp.dot(h, jnp.tanh(h))"]
    for r in ext:
      at = "..." if r.shape == () else str(self.rng.randrange(r.shape[0]))
      opts += [f"jnp.sum({r.name}[...] * h * h) * {r.name}[{at}]"] * 2
      for nm, _ in self.inputs:
        opts.append(f"jnp.sum({nm} * {r.name}[...]) * {r.name}[{at}] "
                    "+ jnp.sum(jnp.sin(h))")
    loss = self.rng.choice(opts)
    internal = [r for r in floats if not r.external]
    if internal and self.rng.random() < 0.7:
      t = self.rng.choice(internal)
      loss += f" + jnp.sum({t.name}[...] * {t.name}[...])"
    return loss

  def _aux(self, ctx):
    opts = [f"{r.name}[...]" for r in ctx.floats()]
    opts += [f"{c.name}[...].astype(jnp.float32)" for c in ctx.counters()]
    opts += ["jnp.sum(h)", "h * 2.0"]
    return self.rng.sample(opts, self.rng.randint(1, min(2, len(opts))))

  def _between(self, refs):
    out = []
    for r in self.rng.sample(refs, self.rng.randint(1, len(refs))):
      if r.dtype == "int32":
        out.append(f"R[{r.name!r}][...] += 3")
      else:
        out.append(f"R[{r.name!r}][...] = R[{r.name!r}][...] * 0.5 + 1.0")
    return out


def generate(seed: int) -> Program:
  return Generator(seed).generate()


def check_program(program: Program, tag: str = "fuzz2") -> oracle.Outcome:
  return oracle.check_source(program.source(), tag)
