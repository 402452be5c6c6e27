"""The PR description of each patch of the series (build/make_patch.py).

Each description says the problem with a reproducer, the semantics, what
changes for existing users and the figures measured for it. Figures that a
check run measured (build/check_patch.py writes OUT/<tag>/check.json) are
filled in when present; the cost figures are from `make bench` and dated.
"""
from __future__ import annotations

import json
import pathlib

PR_33050 = "https://github.com/jax-ml/jax/pull/33050"
LINKS = f"""\
Related: #33050 ({PR_33050},
"make remat work with external refs"): the same default, effects once, with
the entry value as a residual, there by retracing the body when
rematerializing; here the body is discharged once and every rule sees a pure
remat. Refs made with `jax.new_ref(..., kind='no_grad_no_remat')` opt one ref
out of differentiation and rematerialization by declaration; this series
needs no declaration (such refs also give the no-remat answer under it).
"""

SEED = """\
```python
@jax.remat
def f(y, x_ref):
  out = y * x_ref[...]
  x_ref[...] += 1
  return out
x_ref = jax.new_ref(1.)
jax.grad(f)(1., x_ref)   # before: 2.0, x_ref 3.0; after: 1.0, x_ref 2.0
```
"""

BENCH = """\
Cost (`make bench` of jax-remat-refs, 2026-12-01, CPU, 2 cores; A = refs +
remat with this change, B = the same model written without refs + remat, U =
refs + remat before this change, whose answers are wrong): XLA temp memory
A/B 1.00 on every workload (a scan of remat layers reading stacked weights
from a ref by `w_ref[i]`, L = 8/32/128: 1.00; without the loop-hoisting part
it is 4.55/7.09/8.42), residual bytes A/B 1.00; step time A/B within the
scatter of U/B on the same rows (e.g. stacked weights L=128: A/B 0.95, U/B
1.01); trace time of `jit(value_and_grad)` 1.5-2x B on a body made only of
ref reads and writes (the discharge retraces the body once; linear, about
0.7 ms per equation on this machine), compile time within the run-to-run
scatter of U.
"""

TEXT = {
    "debug-callback": """\
# [remat] residuals for a debug callback staged by a names policy

`jax.debug.callback` (or `jax.debug.print`) inside a `jax.checkpoint` whose
policy saves the callback's argument by name raised a `KeyError` under
`jax.grad`, also in programs without refs:

```python
@partial(jax.checkpoint, policy=jax.checkpoint_policies.save_only_these_names('x'))
def f(x):
  x = checkpoint_name(jnp.sin(x), 'x')
  jax.debug.callback(lambda v: None, x)
  return jnp.cos(x)
jax.grad(f)(1.)   # KeyError before this change
```

The partial-eval rule of `debug_callback_p` stages the callback into the
rematerialized computation but did not list the known inputs it reads as
residuals when the policy saves them (they are not recomputed there). It
now does.

What changes for users: the program above runs; nothing else.
""",
    "remat-dce": """\
# [remat] DCE keeps a remat whose only effect is unused-output effectful

`remat_dce` dropped a remat equation with effects (a `debug_callback`,
an `io_callback`) when none of its outputs or inputs were used: the test
`_has_effects(new_jaxpr.effects)` was the wrong way round. A remat whose
outputs are unused now keeps its effects, as every other call primitive
does.

```python
@jax.jit
def f(x):
  jax.checkpoint(lambda x: (jax.debug.callback(cb, x), x)[1])(x)
  return x          # before: cb never ran
```
""",
    "swap-transpose": """\
# [mutable-arrays] swap transpose: a constant swapped in takes no cotangent

The transpose of `swap` accumulated the ref's cotangent into the value
swapped in even when that value is a constant (not a `GradAccum`), which
raised inside `jax.grad` of functions that write a constant into a ref and
read it afterwards. The ref's cotangent is still swapped out; only the
accumulation into a constant is dropped (what later JAX releases do).
""",
    "closed-call": """\
# [core] closed_call's type check accepts the params a retraced call carries

With `jax_enable_checks`, `jax.hessian` of a `jax.checkpoint` around a
`lax.scan` failed in the type checker: a `closed_call` retraced through its
bind carries a `name` param that `_check_closed_call` did not accept. Pure
programs hit it.
""",
    "value-form": f"""\
# [remat] run ref-touching checkpoint bodies in value form

A `jax.checkpoint`-decorated function that reads and writes refs it did not
create gives wrong gradients under `jax.grad`: the rematerializing pass
re-runs the body on the live refs, so it reads the values the forward pass
wrote, and writes them again:

{SEED}
Nested remats compound it, `lax.scan(jax.checkpoint(step))` compounds it per
step; Flax's BatchNorm under remat updates its statistics twice.

**Semantics.** A checkpointed function's effects on external refs
(arguments or closed over) happen once, in the forward pass; the
rematerialization sees exactly the values the forward pass saw. So outputs,
gradients and final ref contents equal those of the same program without
`jax.checkpoint`, under grad, vjp, linearize, jvp, vmap, jit on either side,
scan / fori_loop / cond / switch, nested checkpoints, policies and
higher-order AD.

**How.** By state discharge, a body `f(x, r)` with effects on refs is the
program `v = r[...]; y, v_new = f_pure(x, v); r[...] = v_new`. `checkpoint`
now binds a body that uses refs in that form: the reads and write-backs
(only of refs the body writes) are outside the remat and run once; the remat
wraps the discharged pure body (cached per jaxpr with `weakref_lru_cache`),
which every existing rule handles as any pure function. Nothing
special-cases grad, vmap, loops or nesting: an inner checkpoint was put in
value form when it was traced, and the enclosing discharge takes every other
ref-effectful equation through JAX's own discharge rules. A ref passed twice
is merged into one input first; `prevent_cse` tuples stay aligned; policies
apply to the pure body, so names given to values read from refs work. The
static-index arithmetic that discharge emits for `r[k]` is folded into
literals, so the body is no larger than the pure program's. A `custom_vjp` /
`custom_jvp` whose primal touches a ref has no value form that keeps its
rule: that remat runs as if undecorated, with a warning.

Loops: value form alone saves a scan-of-remat's whole weight ref per
iteration when layers read `w_ref[i]` (O(L^2)). `_scan_known_hoisting` now
discharges refs the known body never writes and reads directly, passing
their values (read once, before the loop) as consts, so residuals that depend
only on them are hoisted as for array consts: weights in a ref cost what
weights in an array cost.

**What changes for existing users.** Pure functions: nothing (same jaxprs).
Functions that read refs: the same results, the refs read at entry. Functions
that write refs: the results of the program without checkpoint (before:
wrong gradients, effects run twice). Bodies whose refs are all internal are
discharged too (before, `cond` writing such a ref inside a checkpoint raised
`NotImplementedError`). An `io_callback` in a body that touches refs meets
the same rules as in a pure body (e.g. it still cannot be differentiated).

{BENCH}
{LINKS}""",
    "remat3": """\
# [remat3] bodies with refs take the value form

With `jax_remat3`, `jax.checkpoint` uses `remat3`, whose `RematTraced`
re-runs the body on the live refs in the backward pass (wrong gradients;
on some versions an assertion on a ref returned as a residual). A body that
takes refs or makes them is now bound in value form through `remat_p`
(previous patch), with the same policy; pure bodies keep `remat3`.

""" + SEED,
    "ref-effects": """\
# [remat] ref_effects= on jax.checkpoint and the jax_remat_ref_effects option

The once semantics of the value-form patch is the default. Some programs
want the other two readings that #33050 named as ambiguous:

* `jax.checkpoint(f, ref_effects='replay')`: the rematerialization runs the
  effects again, on the live refs (the behaviour before the value-form patch;
  for e.g. a ref that counts executions);
* `jax.checkpoint(f, ref_effects='forbid')`: a `ValueError` at trace time
  when `f` touches a ref it did not create, naming the ref and the first
  access.

`ref_effects=None` (default) reads the new option `jax_remat_ref_effects`
(`'once'`, default; also `JAX_REMAT_REF_EFFECTS` and
`with config.remat_ref_effects(...)`) at trace time. `jax.remat` takes the
same keyword.

What changes for existing users: nothing unless they set the option or
keyword.
""",
}


def write_all(out_tag: pathlib.Path, meta: dict) -> None:
  check = out_tag / "check.json"
  results = json.loads(check.read_text()) if check.exists() else None
  for i, p in enumerate(meta["series"], 1):
    text = TEXT[p["name"]]
    text += (f"\nPatch {i} of {len(meta['series'])} against {meta['tag']}: "
             f"+{p['jax_added']} / -{p['jax_removed']} lines under jax/, "
             f"+{p['tests_added']} under tests/ (tests/remat_refs_test.py).\n")
    if results:
      text += ("\nTests with the whole series applied (pytest from the tree's "
               "root, JAX's own pytest configuration, warnings as errors), "
               "against the pristine tag:\n")
      for name, r in results.get("suites", {}).items():
        b = results.get("baseline", {}).get(name)
        text += f"- {name}: {r['summary']}"
        text += f" (pristine: {b['summary']})" if b else ""
        text += (f"; new failures: {r['new_failures']}\n" if r["new_failures"]
                 else "\n")
      text += (f"- seed program: {results.get('seed_patched')} (pristine: "
               f"{results.get('seed_pristine')})\n")
    (out_tag / f"PR-{p['patch'][:-len('.patch')]}.md").write_text(text)
