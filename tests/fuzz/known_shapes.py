"""Programs of the shapes the fuzzers were widened for, written by hand in
the generators' representations: each once showed remat differing from the
same program without remat (a, b, d, f: wrong gradients; e: a hessian that
raised). `SHAPES` maps a letter to a builder; `tests/test_fuzz.py` checks
every one with `tests.fuzz.oracle`, and ``python -m tests.fuzz.known_shapes``
prints each outcome.

  a  nested remats (nothing_saveable around dots_saveable, prevent_cse=False),
     loops reading a ref whole and writing it at ``i % n``; gen, vjp
  b  remat writing a ref around a remat writing it, a loop, and a
     stop_gradient write at the end; gen, jit(grad)
  d  value_and_grad of a remat calling an effects-only remat; gen2
  e  hessian of a remat reading a ref; gen2
  f  a remat scan body inside a remat writing a ref made outside; gen2
  g  issue 20, program 1: a differentiated value written into a ref of kind
     "no_grad_no_remat" in a remat and read back (no gradient through it);
     gen, also with the gradient accumulated through `with_refs`
  h  issue 20, program 2: one ref passed twice to a remat whose while loop
     reads it through one name and writes it through the other; gen2 (the
     remat run must raise JAX's aliasing error or agree)

g needs `jax.new_ref(..., kind=...)` and h's vjp_refs mode `with_refs`;
`AVAILABLE` says which shapes the installed JAX can express.
"""
import numpy as np
from tests.fuzz import gen, gen2, ref_api

P = "jax.checkpoint_policies."
L = gen.Line


def _arr(*v):
  return np.array(v, np.float32)


def _ref(name, value, passing="closure"):
  return gen.RefDecl(name, "float32", value, passing)


def shape_a():
  inner_loop = gen.Fori("loop3", "i3", 2, ["h2"],
                        [L("r0[i3 % 3] = r0[i3 % 3] + 0.125")],
                        ["jnp.sin(h2) * r0[...] + h2 * 0.5"], ["h3"])
  inner = gen.Remat("inner", ["h2"], [inner_loop], ["h3"], ["h4"],
                    P + "dots_saveable", False)
  outer_loop = gen.Fori("loop1", "i1", 2, ["x1"], [],
                        ["jnp.sin(x1) * r0[...] + x1 * 0.5"], ["h2"])
  outer = gen.Remat("f", ["x1"], [outer_loop, inner, L("h5 = h4 * r0[1]")],
                    ["h5"], ["y"], P + "nothing_saveable", True)
  return gen.Program(-1, [("x1", _arr(0.3, -0.2, 0.7))],
                     [_ref("r0", _arr(0.524, -0.514, 0.903))],
                     [outer, L("z = jnp.sin(y)")], ["z"], jit=False,
                     jit_grad=False, modes=("vjp",))


def shape_b():
  inner = gen.Remat("inner", ["h1"], [
      L("r0[...] += 1.0"), L("h2 = jnp.sin(h1) + jnp.dot(h1, h1) * 0.1"),
      L("r0[1:] = r0[:2] * 0.5 + 0.25")], ["h2"], ["h3"], None, True)
  loop = gen.Fori("loop", "i", 2, ["h3"], [L("r0[i % 3] = r0[i % 3] + 0.125")],
                  ["jnp.sin(h3) * r0[...] + h3 * 0.5"], ["h4"])
  outer = gen.Remat("f", ["h1"], [
      L("r0[...] += 1.0"), inner, loop, L("h5 = jnp.tanh(h4 * 1.3 + 0.1)"),
      L("r0[...] = lax.stop_gradient(jnp.cos(h5)) + r0[...] * 0.5")],
      ["h5"], ["y"], P + "dots_saveable", True)
  return gen.Program(-1, [("h1", _arr(0.3, -0.2, 0.7))],
                     [_ref("r0", _arr(-0.398, -0.108, 0.202))],
                     [outer, L("z = jnp.sin(y)")], ["z"], jit=False,
                     jit_grad=True, modes=("jit_grad",))


def _g2(x, refs, body, loss, mode, whole):
  return gen2.Program(-1, 3, [("x1", x)], [np.ones_like(x)], refs, ["h = x1"],
                      body, loss, ["h * 2.0"], (mode,), whole=whole)


def _g2_remat(name, params, body, returns):
  return gen2.Node("remat", name=name, kids=[body], args=dict(
      params=params, returns=returns, policy=None, prevent_cse=True))


def shape_d():
  body = [_g2_remat("body", ["a"], [gen2.line("a[...] = a[...] + 1.0")], False)]
  return _g2(_arr(-0.5, 0.8, 0.41),
             [gen2.RefDecl("a", "float32", _arr(0.28, 0.43, -0.54), "arg")],
             body, "jnp.sum(x1 * a[...]) * a[1]", "vg", dict(policy=None))


def shape_e():
  return _g2(_arr(-1.11, -0.25, 0.17),
             [gen2.RefDecl("a", "float32", _arr(-1.09, 0.95, 0.5), "closure")],
             [], "jnp.sum(a[...] * h * h) * a[1]", "hessian", dict(policy=None))


def shape_f():
  step = gen2.Node("scan", name="step", kids=[[gen2.line("t[1] += h[0]")]],
                   args=dict(carry="c", init="0.", idx="i", xs=None, length=3,
                             y="()", ys="_", remat=True, policy=None))
  body = [gen2.line("t = jax.new_ref(jnp.zeros((3,), jnp.float32))"),
          _g2_remat("body", ["h", "t"], [step, gen2.line("h = t[...] * t[...]")],
                    True)]
  return _g2(_arr(-1.19, 1.02, 1.08), [], body, "jnp.sum(h)", "vg", None)


def shape_g():
  ref = gen.RefDecl("x_ref", "float32", np.float32(1.0), "arg",
                    ref_api.NO_GRAD_KIND)
  blk = gen.Remat("h", ["y", "x_ref"], [L("x_ref[...] = jnp.sin(y)"),
                                        L("v = x_ref[...] * 2.")],
                  ["v"], ["out"], None, True)
  return gen.Program(-1, [("y", np.float32(1.0))], [ref], [blk], ["out"],
                     jit=False, jit_grad=True,
                     grad_specs=("ref",) if ref_api.HAS_WITH_REFS else None,
                     features={"kind", "kind_diff_write"})


def shape_h():
  body = [gen2.line(t) for t in (
      "def body(s):",
      "  i, acc = s",
      "  acc = jnp.sin(acc) * jnp.sum(p1[:, i])",
      "  p1[0] = 0.5 * p1[0] + 0.3 * jnp.sin(acc) + jnp.mean(p0[...]) * 0.2",
      "  return i + 1, acc",
      "_, acc = lax.while_loop(lambda s: s[0] < 3, body, (0, jnp.float32(0.7)))",
      "h = h + 0.2 * jnp.sin(h) * acc")]
  blk = gen2.Node("remat", name="blk", kids=[body], args=dict(
      params=["h", "p0", "p1"], call=["h", "e", "e"], returns=True,
      policy=None, prevent_cse=True, jit="none"))
  e = gen2.RefDecl("e", "float32", np.array([[0.9, 0.6, 1.0], [0.4, 1.3, 0.9]],
                                            np.float32), "closure")
  return gen2.Program(-1, 3, [("x1", _arr(0.3, -0.5, 0.4))], [_arr(1, 1, 1)],
                      [e], ["h = x1"], [blk], "jnp.sum(h)", ["e[0]"],
                      ("vg", "jvp"), aliased=True,
                      features={"aliased", "while_loop"})


SHAPES = dict(a=shape_a, b=shape_b, d=shape_d, e=shape_e, f=shape_f,
              g=shape_g, h=shape_h)
# Shapes the installed JAX can express (g: ref kinds).
AVAILABLE = [k for k in SHAPES if k != "g" or ref_api.NO_GRAD_KIND]


if __name__ == "__main__":
  from tests.fuzz import oracle
  for letter in AVAILABLE:
    outcome = oracle.check_program(SHAPES[letter]())
    print(letter, outcome.kind, *outcome.details[:2], sep="\n  ")
