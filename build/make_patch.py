"""`make patch`: the change as a series of in-place patches against JAX's tags.

    python build/make_patch.py [--tags jax-v0.10.2,...] [--repo PATH] [--out DIR]

For each tag (default: every supported tag the JAX repository has, see
`TAGS`) the tag's tree is exported into a scratch git repository and the
series is built by editing JAX's own files where the code lives, one commit a
patch, smallest first:

  0001 debug-callback   debugging.py: a callback replayed in the remat gets
                        the residuals it reads (KeyError with names policies)
  0002 remat-dce        ad_checkpoint.py: remat_dce keeps effectful remats
                        whose outputs are unused            (tags that drop them)
  0003 swap-transpose   state/primitives.py: a constant swapped into a ref
                        takes no cotangent                  (tags without it)
  0004 closed-call      core.py: closed_call's type check accepts its params
                                                            (tags without it)
  0005 value-form       ad_checkpoint.py: a remat whose body uses refs is bound
                        in value form; loops.py: scan hoists reads of refs its
                        body never writes
  0006 remat3           ad_checkpoint.py: remat3 of a body with refs takes the
                        value form                          (tags with remat3)
  0007 ref-effects      ad_checkpoint.py + config.py: `ref_effects=` on
                        jax.checkpoint and the jax_remat_ref_effects option

and tests/remat_refs_test.py grows with each patch (its sections come from
build/upstream/remat_refs_test.py, split at `# -- NAME --` lines).

One source of truth: the code of 0005 (and the queries 0006/0007 use) is not
written here. It is the overlay's own functions (jax_remat_refs/_value_form.py,
_loops.py, _jaxpr_util.py, _errors.py, _report.py), extracted with `ast` and
renamed into JAX's namespace (`ju.is_ref` -> `_is_ref`, ...); the overlay's
`_compat` calls are replaced by the one form the tag has, probed from the
tag's source (`Tag.features`), so a patch carries no code for other versions.
What only the upstream form has (the edits of call sites, the mode option)
is written below as edits of the tag's text, each anchored on text that must
be there exactly once.

Outputs in --out (default build/out/patches): <tag>/NNNN-<name>.patch,
<tag>/PR-NNNN-<name>.md, <tag>/series.json (line counts: jax/ and tests/
apart). `--check` then, per tag: `git apply` of the series in order on a fresh
export (into <tag>/tree). build/check_patch.py runs JAX's own tests and the
added ones on that tree (`make patch-check`).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
PKG = REPO / "jax_remat_refs"
UPSTREAM = REPO / "build" / "upstream"
DEFAULT_JAX_REPO = pathlib.Path(os.environ.get(
    "JAX_REPO", "/work/.mirror/jax-ml+jax/repo"))
TAGS = ("jax-v0.10.0", "jax-v0.10.1", "jax-v0.10.2", "jax-v0.11.0")

AC = "jax/_src/ad_checkpoint.py"
LOOPS = "jax/_src/lax/control_flow/loops.py"
TEST = "tests/remat_refs_test.py"
EXPORTED = ("jax", "tests", "conftest.py", "pyproject.toml", "setup.py")


# --------------------------------------------------------------------------
# the tag's tree

def git(*args, cwd=None, check=True, **kw):
  return subprocess.run(["git", *args], cwd=cwd, check=check, text=True,
                        capture_output=True, **kw)


def export(jax_repo: pathlib.Path, tag: str, dest: pathlib.Path) -> None:
  """The tree of `tag`, as a git repository with one commit."""
  dest.mkdir(parents=True)
  # The paths a patch touches and JAX's test set-up (a mirror may lack the
  # blobs of large files elsewhere in the tree).
  archive = subprocess.run(["git", f"--git-dir={jax_repo}", "archive", tag,
                            "--", *EXPORTED], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
  git("init", "-q", cwd=dest)
  git("add", "-A", cwd=dest)
  git("-c", "user.name=make_patch", "-c", "user.email=make_patch@localhost",
      "commit", "-qm", tag, cwd=dest)


class Tag:
  """The files of one tag's tree and the features the series depends on."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    ac = self.read(AC)
    self.features = dict(
        # A ref effect names its var (`input`) or its position (`input_index`).
        effect_has_var="input_index" not in self.read("jax/_src/effects.py"),
        # `core.Jaxpr` carries its consts (no ClosedJaxpr).
        jaxpr_is_closed="class ClosedJaxpr" not in self.read("jax/_src/core.py"),
        # discharge_state(closed_jaxpr, should_discharge=) or the older
        # discharge_state(jaxpr, consts, ...) with discharge_state2 closed.
        discharge_takes_closed=bool(re.search(
            r"def discharge_state\(\s*closed_jaxpr",
            self.read("jax/_src/state/discharge.py"))),
        dce_drops_effects=("_has_effects(new_jaxpr.effects)):\n    return used_inputs, None"
                           in ac),
        swap_accumulates_constants=(
            "    x.accum(x_bar)\nad.fancy_transposes[swap_p]"
            in self.read("jax/_src/state/primitives.py")),
        closed_call_check_rejects_params=(
            "def _check_closed_call(_, *in_atoms, call_jaxpr):"
            in self.read("jax/_src/core.py")),
        has_remat3="config.remat3" in ac and "def _remat3(policy, static_argnums"
        in ac,
    )

  def read(self, path: str) -> str:
    return (self.root / path).read_text()

  def write(self, path: str, text: str) -> None:
    (self.root / path).write_text(text)

  def edit(self, path: str, old: str, new: str) -> None:
    """Replace `old`, which must occur exactly once, by `new`."""
    text = self.read(path)
    n = text.count(old)
    if n != 1:
      raise SystemExit(f"{path}: expected the anchor once, found {n}:\n{old}")
    self.write(path, text.replace(old, new))

  def commit(self, name: str) -> str:
    git("add", "-A", cwd=self.root)
    git("-c", "user.name=make_patch", "-c", "user.email=make_patch@localhost",
        "commit", "-qm", name, cwd=self.root)
    return git("format-patch", "-1", "--stdout", "--no-signature",
               "--no-stat", cwd=self.root).stdout


# --------------------------------------------------------------------------
# the overlay's functions in JAX's namespace

def _defs(module: str) -> dict[str, str]:
  """Top-level definitions of jax_remat_refs/<module>.py by name: source text
  with decorators (assignments too, by their target's name)."""
  src = (PKG / f"{module}.py").read_text()
  out = {}
  for node in ast.parse(src).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      start = min([d.lineno for d in node.decorator_list] + [node.lineno])
      names = [node.name]
    elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
      start, names = node.lineno, [node.targets[0].id]
    else:
      continue
    lines = src.splitlines()[start - 1:node.end_lineno]
    for n in names:
      out[n] = "\n".join(lines) + "\n"
  return out


# What each patch takes from the overlay, in the order it is emitted.
VALUE_FORM_DEFS = (
    ("_jaxpr_util", ("is_ref", "ref_effect_vars", "_jaxpr_ref_effect_vars",
                     "touched_ref_invars", "written_ref_invars", "takes_refs",
                     "has_refs", "sub_jaxprs", "find_eqn", "first_access",
                     "_FOLDABLE", "_int_scalar", "fold_index_literals",
                     "_fold")),
    ("_errors", ("describe_input", "_where", "_fun",
                 "warn_not_rematerialized")),
    ("_report", ("_SCOPE", "entry_read_scope")),
    ("_value_form", ("_CUSTOM_RULE_PRIMITIVES", "bind_value_form",
                     "_has_ref_effects", "_makes_refs", "_value_form",
                     "_merge_aliased_refs",
                     "_merged_jaxpr", "_custom_rule_on_refs")),
)
LOOP_DEFS = (("_loops", ("discharge_invariant_refs", "_read_only_directly")),)

# Public overlay names that become private in JAX (the rest keep theirs).
PRIVATE = {
    "is_ref": "_is_ref", "ref_effect_vars": "_ref_effect_vars",
    "touched_ref_invars": "_touched_ref_invars",
    "written_ref_invars": "_written_ref_invars", "takes_refs": "_takes_refs",
    "has_refs": "_has_refs", "sub_jaxprs": "_sub_jaxprs",
    "find_eqn": "_find_eqn", "first_access": "_first_access",
    "fold_index_literals": "_fold_index_literals",
    "describe_input": "_describe_ref", "_where": "_where_desc",
    "_fun": "_fun_desc",
    "warn_not_rematerialized": "_warn_not_rematerialized",
    "entry_read_scope": "_entry_read_scope", "_SCOPE": "_ENTRY_READ_SCOPE",
    "bind_value_form": "_remat_bind_value_form",
    "_value_form": "_remat_value_form",
    "_makes_refs": "_makes_own_refs",
    "_CUSTOM_RULE_PRIMITIVES": "_CUSTOM_RULE_PRIMITIVES",
    "discharge_invariant_refs": "_discharge_invariant_refs",
    "_read_only_directly": "_refs_only_read_directly",
    "_fold": "_fold_index_equation", "_FOLDABLE": "_FOLDABLE_INDEX_PRIMITIVES",
    "_int_scalar": "_is_int_scalar",
}
MODULE_ALIASES = ("ju", "_errors", "_report", "_value_form", "_loops")


def _compat_forms(f: dict, discharge: str) -> list[tuple[str, str]]:
  """(regex, replacement) for each `_compat` use, in the tag's one form."""
  if f["discharge_takes_closed"]:
    discharge_closed = rf"{discharge}.discharge_state(\1, should_discharge=\2)"
  else:
    discharge_closed = rf"{discharge}.discharge_state2(\1, should_discharge=\2)"
  forms = [
      (r"_compat\.effect_var\((\w+), (\w+)\)",
       r"\1.input" if f["effect_has_var"] else r"\2[\1.input_index]"),
      (r"_compat\.JAXPR_TYPES",
       "(core.Jaxpr,)" if f["jaxpr_is_closed"] else
       "(core.Jaxpr, core.ClosedJaxpr)"),
      (r"_compat\.open_closed\((\w+)\)\[0\]",
       r"\1" if f["jaxpr_is_closed"] else
       r"(\1.jaxpr if isinstance(\1, core.ClosedJaxpr) else \1)"),
      (r"(\w+), _ = _compat\.open_closed\((\w+)\)",
       r"\1 = \2" if f["jaxpr_is_closed"] else r"\1 = \2.jaxpr"),
      (r"_compat\.discharge_closed\((\w+), (\w+)\)", discharge_closed),
      (r"_compat\.discharge_state\(", "_discharge_refs("),
  ]
  return forms


def _discharge_refs_def(f: dict) -> str:
  """`_compat.discharge_state` in the tag's one form."""
  if f["jaxpr_is_closed"]:
    body = ("  closed = discharge.discharge_state(\n"
            "      jaxpr, should_discharge=should_discharge)\n"
            "  return closed, list(closed.consts)\n")
  elif f["discharge_takes_closed"]:
    body = ("  closed = discharge.discharge_state(\n"
            "      core.ClosedJaxpr(jaxpr, []), should_discharge=should_discharge)\n"
            "  return closed.jaxpr, list(closed.consts)\n")
  else:
    body = ("  return discharge.discharge_state(\n"
            "      jaxpr, [], should_discharge=should_discharge)\n")
  return ("def _discharge_refs(jaxpr: core.Jaxpr, should_discharge):\n"
          '  """Discharge the refs selected by `should_discharge` (one per '
          'invar) of a\n  consts-free jaxpr: (jaxpr with constvars, consts)."""\n'
          + body)


def translate(text: str, f: dict, discharge: str, prefix: str = "") -> str:
  """Overlay code -> the tag's namespace (`prefix`: where the helpers live
  seen from the target file, e.g. 'ad_checkpoint.' from loops.py)."""
  for pat, rep in _compat_forms(f, discharge):
    text = re.sub(pat, rep, text)
  if "_compat." in text:
    raise SystemExit(f"a _compat use without an upstream form:\n{text}")
  for alias in MODULE_ALIASES:
    text = re.sub(rf"\b{alias}\.(\w+)",
                  lambda m: prefix + PRIVATE.get(m.group(1), m.group(1)), text)
  for old, new in PRIVATE.items():
    # Definitions, calls and (upper-case) constants; a local variable that
    # shares a helper's name keeps it.
    follow = r"\b" if old.lstrip("_").isupper() else r"(?=\()"
    text = re.sub(rf"(?<![\w.]){re.escape(old)}{follow}", new, text)
  text = text.replace("UPSTREAM_BIND(", "remat_p.bind(")
  text = text.replace("RematRefWarning", "UserWarning")
  return text


def overlay_code(defs_spec, f: dict, discharge: str, prefix: str = "") -> str:
  chunks = []
  for module, names in defs_spec:
    defs = _defs(module)
    for n in names:
      chunks.append(translate(defs[n], f, discharge, prefix))
  return "\n\n\n".join(c.rstrip("\n") for c in chunks) + "\n"


# --------------------------------------------------------------------------
# tests

def test_sections() -> dict[str, str]:
  """build/upstream/remat_refs_test.py split at its `# -- NAME --` lines."""
  text = (UPSTREAM / "remat_refs_test.py").read_text()
  parts = re.split(r"^# -- ([\w-]+) --\n", text, flags=re.M)
  sections = {"head": parts[0]}
  for name, body in zip(parts[1::2], parts[2::2]):
    sections[name] = body
  return sections


def add_test_section(tag: Tag, name: str) -> None:
  """Append section `name` (before the `main` section) to tests/remat_refs_test.py."""
  s = test_sections()
  if name not in s:
    return
  path = tag.root / TEST
  main = "# -- main --\n" + s["main"]
  text = path.read_text() if path.exists() else s["head"] + main
  text = text.replace(main, f"# -- {name} --\n" + s[name].rstrip("\n") +
                      "\n\n\n" + main)
  path.write_text(text)


# --------------------------------------------------------------------------
# the series

# The independent fixes: (name, the feature that says the tag needs it or
# None for every tag, file, text replaced, replacement). Each adds its test
# section `fix-<name>`.
FIXES = (
    ("debug-callback", None, "jax/_src/debugging.py",
     "  # If we can't save the debug callback (thanks to the policy) we listen to\n"
     "  # the policy and stage out the debug callback.\n"
     "  return eqn, eqn, [], [], []\n",
     "  # If we can't save the debug callback (thanks to the policy) we listen to\n"
     "  # the policy and stage out the debug callback. Known inputs it reads that\n"
     "  # are not instantiated (e.g. a value the policy saves by name) are\n"
     "  # residuals: the staged callback cannot recompute them.\n"
     "  res = [v for v, inst in zip(eqn.invars, inst_in)\n"
     "         if not inst and not isinstance(v, core.Literal)]\n"
     "  return eqn, eqn, [], [], res\n"),
    ("remat-dce", "dce_drops_effects", AC,
     "      _has_effects(new_jaxpr.effects)):\n    return used_inputs, None",
     "      not _has_effects(new_jaxpr.effects)):\n    return used_inputs, None"),
    ("swap-transpose", "swap_accumulates_constants",
     "jax/_src/state/primitives.py",
     "    x.accum(x_bar)\nad.fancy_transposes[swap_p]",
     "    if isinstance(x, ad.GradAccum):\n"
     "      x.accum(x_bar)  # a constant x takes no cotangent; the ref's is "
     "still swapped out\nad.fancy_transposes[swap_p]"),
    ("closed-call", "closed_call_check_rejects_params", "jax/_src/core.py",
     "def _check_closed_call(_, *in_atoms, call_jaxpr):\n",
     "def _check_closed_call(_, *in_atoms, call_jaxpr, **params):\n"
     "  del params  # e.g. the `name` of a closed_call retraced through its bind\n"),
)


def fix(name, feature, path, old, new):
  def make(tag: Tag):
    if feature is not None and not tag.features[feature]:
      return False
    tag.edit(path, old, new)
    add_test_section(tag, f"fix-{name}")
    return True
  return name, make


VALUE_FORM_DOC = '''
### Remat of functions that use refs: value form
#
# A body `f(x, r)` with effects on refs `r` (arguments, closed over, or made
# inside) is, by state discharge, the program
#     v = r[...]; y, v_new = f_pure(x, v); r[...] = v_new
# (`v_new` for the refs the body writes). `checkpoint` binds it in that form:
# the reads and write-backs run once, in the forward pass, and the remat wraps
# the pure `f_pure`, which every rule below rematerializes as it does any pure
# function, seeing the values the refs had at entry. Without it the backward
# pass re-runs the body on the live refs: it reads values the forward pass
# wrote and writes them again.

'''


def p_value_form(tag: Tag):
  f = tag.features
  ac = tag.read(AC)
  code = overlay_code(VALUE_FORM_DEFS, f, "discharge")
  code = _discharge_refs_def(f) + "\n\n\n" + code
  imports = []
  for line in ("import contextlib\n", "import functools\n", "import warnings\n"):
    if line not in ac:
      imports.append(line)
  if imports:
    tag.edit(AC, "import logging\n", "import logging\n" + "".join(imports))
  extra = ""
  if "from jax._src import custom_derivatives\n" not in ac:
    extra += "from jax._src import custom_derivatives\n"
  if "from jax._src import linear_util as lu\n" not in ac:
    tag.edit(AC, "from jax._src import dtypes\n",
             "from jax._src import dtypes\nfrom jax._src import linear_util as lu\n")
  extra += "from jax._src.state import primitives as state_primitives\n"
  extra += "from jax._src.util import weakref_lru_cache\n" if (
      "weakref_lru_cache" not in ac) else ""
  tag.edit(AC, "from jax._src.state import discharge\n",
           "from jax._src.state import discharge\n" + extra)
  tag.edit(AC, "from jax._src.state.types import AbstractRef\n",
           "from jax._src.state.types import (\n"
           "    AbstractRef, AccumEffect, RefEffect, WriteEffect)\n")
  abc = re.search(r"^from collections.abc import (.*)$", ac, flags=re.M)
  if "Iterator" not in abc.group(1):
    tag.edit(AC, abc.group(0), abc.group(0) + ", Iterator")
  tag.edit(AC,
           "    out_flat = remat_p.bind(\n"
           "        *consts, *args_flat, jaxpr=jaxpr, prevent_cse=cse, differentiated=False,\n"
           "        policy=policy)\n",
           "    if _has_refs(jaxpr):\n"
           "      out_flat = _remat_bind_value_form(\n"
           "          (*consts, *args_flat), jaxpr, cse, False, policy)\n"
           "    else:\n"
           "      out_flat = remat_p.bind(\n"
           "          *consts, *args_flat, jaxpr=jaxpr, prevent_cse=cse,\n"
           "          differentiated=False, policy=policy)\n")
  anchor = "remat_p.bind = _remat_bind\n"
  tag.edit(AC, anchor, anchor + "\n" + VALUE_FORM_DOC + code)
  # loops.py: a scan's known body reads refs it never writes once, outside.
  loops = tag.read(LOOPS)
  lcode = overlay_code(LOOP_DEFS, f, "state_discharge", prefix="ad_checkpoint.")
  if "from jax._src.state import primitives as state_primitives\n" not in loops:
    line = re.search(r"^from jax\._src\.state import .*discharge as state_discharge.*\n",
                     loops, flags=re.M).group(0)
    tag.edit(LOOPS, line,
             line + "from jax._src.state import primitives as state_primitives\n")
  head = re.search(r"def _scan_known_hoisting\(jaxpr_known, known_consts, num_res\):\n",
                   loops)
  if head is None:
    raise SystemExit(f"{LOOPS}: no _scan_known_hoisting")
  tag.edit(LOOPS, head.group(0),
           lcode + "\n\n" + head.group(0) +
           "  # Refs the known body never writes hold one value in every iteration:\n"
           "  # read them once here, so that residuals depending only on them are\n"
           "  # hoisted like those of array consts.\n"
           "  jaxpr_known, known_consts = _discharge_invariant_refs(\n"
           "      jaxpr_known, known_consts)\n")
  add_test_section(tag, "core")
  return True


def p_remat3(tag: Tag):
  if not tag.features["has_remat3"]:
    return False
  f = tag.features
  old = ("  jaxpr, consts = pe.separate_consts(jaxpr_)\n"
         "  out_flat = RematTraced(jaxpr, policy)(*consts, *args_ft)\n")
  if f["jaxpr_is_closed"]:
    body = "jaxpr_open, all_consts = pe.convert_constvars_jaxpr(jaxpr_), list(jaxpr_.consts)"
  else:
    body = ("jaxpr_open, all_consts = (pe.convert_constvars_jaxpr(jaxpr_.jaxpr),\n"
            "                                    list(jaxpr_.consts))")
  new = ("  if _has_refs(jaxpr_.jaxpr if isinstance(jaxpr_, core.ClosedJaxpr) "
         "else jaxpr_):\n" if not f["jaxpr_is_closed"] else
         "  if _has_refs(jaxpr_):\n")
  new += ("    # RematTraced re-runs the body on the live refs; the value form\n"
          "    # (see _remat_bind_value_form) keeps ref effects in the forward pass.\n"
          f"    {body}\n"
          "    out_flat = _remat_bind_value_form(\n"
          "        (*all_consts, *args_ft), jaxpr_open, True, False, policy)\n"
          "    return out_avals_ft.update(out_flat).unflatten()\n") + old
  tag.edit(AC, old, new)
  add_test_section(tag, "fix-remat3")
  return True


MODES_CONFIG = '''
remat_ref_effects = enum_state(
    name='jax_remat_ref_effects',
    enum_values=['once', 'replay', 'forbid'],
    default='once',
    help=('What jax.checkpoint / jax.remat does with the effects of the function '
          'on refs it did not create (arguments or closed over), when '
          'checkpoint is not given ref_effects: "once" (default) runs them in '
          'the forward pass only and rematerializes from the values the refs '
          'had at entry; "replay" runs them again when rematerializing, on the '
          'live refs; "forbid" raises an error at trace time.'),
    include_in_jit_key=True,
    include_in_trace_context=True)
'''


def p_modes(tag: Tag):
  cfg = tag.read("jax/_src/config.py")
  anchor = "\nremat3 = bool_state(" if "\nremat3 = bool_state(" in cfg else None
  if anchor is None:
    anchor = "\nenable_checks = bool_state("
  tag.edit("jax/_src/config.py", anchor, MODES_CONFIG + anchor)
  ac = tag.read(AC)
  _add_keyword(tag, r"def checkpoint\(fun: Callable, \*, prevent_cse: .*\n"
               r"(?:.*\n)*?.*\) -> Callable:\n", " " * 15)
  tag.edit(AC, "  If ``fun`` involves Python control flow that depends on argument values,\n",
           "  ``ref_effects`` chooses what happens to the effects of ``fun`` on refs it\n"
           "  did not create (arguments or closed over): ``'once'`` runs them in the\n"
           "  forward pass only, and the rematerialization sees the values the refs\n"
           "  had at entry (the same results as without checkpoint); ``'replay'`` runs\n"
           "  them again when rematerializing, on the live refs; ``'forbid'`` raises a\n"
           "  ``ValueError`` at trace time. ``None`` (the default) uses the\n"
           "  ``jax_remat_ref_effects`` option (default ``'once'``).\n\n"
           "  If ``fun`` involves Python control flow that depends on argument values,\n")
  tag.edit(AC, "  if isinstance(static_argnums, int):\n    static_argnums = static_argnums,\n",
           "  if ref_effects not in (None, 'once', 'replay', 'forbid'):\n"
           "    raise ValueError(\"checkpoint's ref_effects must be None, 'once', "
           "'replay' or 'forbid', \"\n"
           "                     f\"got {ref_effects!r}\")\n"
           "  if isinstance(static_argnums, int):\n    static_argnums = static_argnums,\n")
  tag.edit(AC,
           "    if _has_refs(jaxpr):\n"
           "      out_flat = _remat_bind_value_form(\n",
           "    mode = ref_effects or config.remat_ref_effects.value\n"
           "    if mode == 'forbid' and any(_touched_ref_invars(jaxpr)):\n"
           "      _raise_forbidden_refs(jaxpr)\n"
           "    if _has_refs(jaxpr) and (mode != 'replay' or not _takes_refs(jaxpr)):\n"
           "      out_flat = _remat_bind_value_form(\n")
  # remat: the alias passes ref_effects on.
  _add_keyword(tag, r"def remat\(fun: Callable, \*, prevent_cse: bool = True,\n"
               r"(?:.*\n)*?  return checkpoint\(fun, prevent_cse=prevent_cse, "
               r"policy=policy,\n(?:.*\n)*?.*\)\n", " " * 10,
               pass_on=True)
  # the error, next to the value-form helpers
  tag.edit(AC, "def _remat_bind_value_form(",
           FORBIDDEN_DEF + "\n\ndef _remat_bind_value_form(")
  add_test_section(tag, "modes")
  return True


def _add_keyword(tag: Tag, pattern: str, indent: str, pass_on=False) -> None:
  """Add `ref_effects: str | None = None` to the signature matched by
  `pattern` in ad_checkpoint.py (and pass it on in its last call)."""
  m = re.search(pattern, tag.read(AC))
  if m is None:
    raise SystemExit(f"{AC}: no match for {pattern!r}")
  old = m.group(0)
  new = old.replace(") -> Callable:\n",
                    f",\n{indent}ref_effects: str | None = None) -> Callable:\n")
  if pass_on:
    new = re.sub(r"\)\n$", ", ref_effects=ref_effects)\n", new)
  if new.count("ref_effects") != 1 + 2 * pass_on:
    raise SystemExit(f"{AC}: unexpected form of {old!r}")
  tag.edit(AC, old, new)


FORBIDDEN_DEF = '''def _raise_forbidden_refs(jaxpr: core.Jaxpr):
  i = _touched_ref_invars(jaxpr).index(True)
  raise ValueError(
      f"jax.checkpoint(ref_effects='forbid'): {_fun_desc(jaxpr)} uses a "
      f"ref it did not create, the {_describe_ref(jaxpr, i)}; first "
      f"access at {_where_desc(_first_access(jaxpr, jaxpr.invars[i]))}. "
      "Pass the ref's value instead, or choose ref_effects='once' (its effects "
      "happen in the forward pass only) or 'replay' (rematerialization runs "
      "them again).")
'''

SERIES = (
    *(fix(*f) for f in FIXES),
    ("value-form", p_value_form),
    ("remat3", p_remat3),
    ("ref-effects", p_modes),
)


def count_lines(patch: str) -> dict:
  """Added / removed lines under jax/ and tests/."""
  counts = {"jax_added": 0, "jax_removed": 0, "tests_added": 0, "tests_removed": 0}
  where = None
  for line in patch.splitlines():
    if line.startswith("diff --git"):
      where = "tests" if " b/tests/" in line else "jax"
    elif line.startswith("+") and not line.startswith("+++"):
      counts[f"{where}_added"] += 1
    elif line.startswith("-") and not line.startswith("---"):
      counts[f"{where}_removed"] += 1
  return counts


def build(jax_repo: pathlib.Path, tag_name: str, out: pathlib.Path) -> list[dict]:
  out_tag = out / tag_name
  if out_tag.exists():
    shutil.rmtree(out_tag)
  out_tag.mkdir(parents=True)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp) / "jax"
    export(jax_repo, tag_name, root)
    tag = Tag(root)
    series = []
    for name, make in SERIES:
      if not make(tag):
        continue
      patch = tag.commit(f"remat refs: {name}")
      num = f"{len(series) + 1:04d}"
      (out_tag / f"{num}-{name}.patch").write_text(patch)
      series.append(dict(patch=f"{num}-{name}.patch", name=name,
                         **count_lines(patch)))
    meta = dict(tag=tag_name, features=tag.features, series=series)
    (out_tag / "series.json").write_text(json.dumps(meta, indent=1) + "\n")
    import pr_description  # build/pr_description.py
    pr_description.write_all(out_tag, meta)
  return series


def check_apply(jax_repo: pathlib.Path, tag_name: str, out: pathlib.Path) -> None:
  """`git apply` of the series, in order, on a fresh export of the tag."""
  meta = json.loads((out / tag_name / "series.json").read_text())
  dest = out / tag_name / "tree"
  if dest.exists():
    shutil.rmtree(dest)
  export(jax_repo, tag_name, dest)
  for p in meta["series"]:
    r = git("apply", "--check", str(out / tag_name / p["patch"]), cwd=dest,
            check=False)
    if r.returncode:
      raise SystemExit(f"{tag_name}: {p['patch']} does not apply:\n{r.stderr}")
    git("apply", str(out / tag_name / p["patch"]), cwd=dest)
  print(f"{tag_name}: {len(meta['series'])} patches apply in order "
        f"(patched tree: {dest})")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tags", default=",".join(TAGS))
  ap.add_argument("--repo", default=str(DEFAULT_JAX_REPO),
                  help="a git repository of JAX that has the tags")
  ap.add_argument("--out", default=str(REPO / "build" / "out" / "patches"))
  ap.add_argument("--check", action="store_true",
                  help="apply each series to a fresh export of its tag "
                  "(into OUT/<tag>/tree)")
  ns = ap.parse_args(argv)
  sys.path.insert(0, str(REPO / "build"))
  jax_repo, out = pathlib.Path(ns.repo), pathlib.Path(ns.out)
  if not jax_repo.exists():
    raise SystemExit(f"no JAX repository at {jax_repo}: pass --repo (make "
                     "patch JAX_REPO=...), e.g. a `git clone --bare "
                     "https://github.com/jax-ml/jax` with its tags")
  if not (jax_repo / "HEAD").exists() and (jax_repo / ".git").exists():
    jax_repo = jax_repo / ".git"
  for tag_name in ns.tags.split(","):
    series = build(jax_repo, tag_name, out)
    print(f"{tag_name}: " + ", ".join(
        f"{p['patch']} (+{p['jax_added']}/-{p['jax_removed']} jax, "
        f"+{p['tests_added']} tests)" for p in series))
    if ns.check:
      check_apply(jax_repo, tag_name, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
