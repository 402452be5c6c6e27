"""`make patch`: the change as a patch against JAX's own tree, proved alone.

Run with the interpreter of a venv that has a supported JAX installed:

  1. Checks that the installed `jax` package is pristine (every file against the
     sha256 in its wheel RECORD; no file the wheel did not install).
  2. Builds JAX's tree with the change:
       jax/_src/remat_refs/*.py     this repo's package (demo/flax modules left
                                    out), imports rewritten to the new place,
                                    the version-refusal call removed;
       jax/_src/ad_checkpoint.py    `_install_ref_aware_remat_rules()` at the end;
       jax/__init__.py              calls it at the very end, once every module
                                    the rules import has been loaded;
       tests/remat_refs_*_test.py   this repo's tests/test_*.py in JAX's style
                                    (helpers they import come along, flattened;
                                    files needing flax & co. and the tests named
                                    in build/overlay_only.txt stay out).
  3. Writes build/out/jax-remat-refs-<jax version>.patch (git diff format, paths
     relative to a JAX checkout's root), build/out/tests/ and
     build/out/PR_DESCRIPTION.md.
  4. Self-check, on a copy of the pristine package in a temporary directory
     (the venv's own jax is never written to):
       `git apply --check` and `patch --dry-run`; apply with `patch -p1`;
       the seed program with the overlay package blocked from import: the
         right answer (grad 1.0 / ref 2.0, equal to the program without remat);
       side by side: the converted in-JAX tests with the overlay package
         blocked, and this repo's tests/ against the patched JAX (the overlay
         then only aliases jax._src.remat_refs, see jax_remat_refs/__init__.py);
         logs in build/out/selfcheck-<jax version>/; tests that fail are rerun
         with the overlay on the venv's pristine JAX to tell whose they are;
       `patch -R`: the copy matches the wheel RECORD again, and the seed
         program is back to upstream's grad 2.0 / ref 3.0 (and with the
         overlay imported, 1.0 / 2.0 again).
     Results go to build/out/selfcheck-<jax version>.json.

Environment:
  PATCH_TESTS      which tests the self-check runs: "all" (default), "none", or
                   names/globs of tests/test_*.py files separated by commas or
                   spaces ("smoke", "test_smoke.py", "test_*cond*"); a leading
                   "-" leaves files out ("-fuzz": all but test_fuzz.py).
  PATCH_SUITES     which runs of those tests: "jax,repo" (default); "jax": the
                   converted tests/remat_refs_*_test.py with this repo's
                   package blocked; "repo": this repo's tests/ on the patched
                   JAX.
  PATCH_SELFCHECK  "0" writes the patch without the self-check.
  PATCH_KEEP_TMP   "1" keeps the temporary JAX tree and prints where it is.
"""
from __future__ import annotations

import ast
import base64
import datetime
import difflib
import fnmatch
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import tokenize
from xml.etree import ElementTree

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "out"
PKG = "jax_remat_refs"              # this repo's package
IN_JAX_PKG = "jax._src.remat_refs"  # where the patch puts it
IN_JAX_DIR = "jax/_src/remat_refs"
IN_JAX_BIND = "remat_refs"          # the name code binds it to
TEST_PREFIX = "remat_refs_"         # JAX's tests/ is flat: our files share this
EXCLUDED_MODULES = ("demo*", "*flax*", "__main__")
SEED_GRAD, SEED_REF = 1.0, 2.0          # y * x with x = 1 at entry; one += 1
UPSTREAM_GRAD, UPSTREAM_REF = 2.0, 3.0  # the += 1 replayed before the re-read
# Marks the block of jax_remat_refs/__init__.py that makes the overlay an alias
# of a patched JAX's copy; the in-JAX copy of __init__.py leaves it out.
DETECT_BEGIN = "# >>> in-JAX build detection"
DETECT_END = "# <<< in-JAX build detection"
# Tests (functions or classes) of the out-of-tree package itself carry this
# decorator; they are left out of JAX's tests/.
OVERLAY_ONLY = "overlay_only"


class BuildError(Exception):
  pass


def log(msg: str = "") -> None:
  print(msg, flush=True)


# --------------------------------------------------------------------------
# the installed JAX, checked against its wheel RECORD

def installed_jax():
  """(version, package directory, {relative path: (sha256 b64, size)})."""
  dist = importlib.metadata.distribution("jax")
  record = {}
  for f in dist.files or ():
    rel = str(f).replace(os.sep, "/")
    if not rel.startswith("jax/") or f.hash is None:
      continue
    if f.hash.mode != "sha256":
      raise BuildError(f"RECORD of jax {dist.version}: {rel} hashed with "
                       f"{f.hash.mode}, expected sha256")
    record[rel] = (f.hash.value, f.size)
  if not record:
    raise BuildError(f"jax {dist.version} has no RECORD with file hashes; "
                     "cannot tell whether it is pristine")
  jax_dir = pathlib.Path(dist.locate_file("jax/__init__.py")).parent.resolve()
  return dist.version, jax_dir, record


def _b64_sha256(data: bytes) -> str:
  digest = hashlib.sha256(data).digest()
  return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _is_bytecode(rel: str) -> bool:
  return "__pycache__/" in rel or rel.endswith((".pyc", ".pyo"))


def pristine_problems(root: pathlib.Path, record) -> list[str]:
  """How the tree `root`/jax differs from the RECORD ([] when pristine).

  Bytecode caches are ignored; a directory holding nothing but them (left
  behind by a reverted patch) is reported, since it would import as a
  namespace package."""
  problems = []
  for rel, (want, size) in sorted(record.items()):
    if _is_bytecode(rel):
      continue
    path = root / rel
    if not path.is_file():
      problems.append(f"missing: {rel}")
      continue
    data = path.read_bytes()
    if (size is not None and len(data) != size) or _b64_sha256(data) != want:
      problems.append(f"modified: {rel}")
  for dirpath, dirnames, filenames in os.walk(root / "jax"):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    rel_dir = pathlib.Path(dirpath).relative_to(root).as_posix()
    for name in filenames:
      rel = f"{rel_dir}/{name}"
      if not _is_bytecode(rel) and rel not in record:
        problems.append(f"not installed by the wheel: {rel}")
    if not filenames and not dirnames:
      problems.append(f"directory not installed by the wheel: {rel_dir}/")
  return problems


# --------------------------------------------------------------------------
# source rewriting: imports of this repo's modules -> their place in JAX

def _line_offsets(src: str) -> list[int]:
  offsets, pos = [0], 0
  for line in src.splitlines(keepends=True):
    pos += len(line)
    offsets.append(pos)
  return offsets


def _char_col(lines: list[str], lineno: int, byte_col: int) -> int:
  """ast gives columns in UTF-8 bytes; tokenize and str slicing use chars."""
  return len(lines[lineno - 1].encode("utf-8")[:byte_col].decode("utf-8"))


def _apply_edits(src: str, edits) -> str:
  """`edits`: ((line, col), (line, col), text), 1-based lines, char cols."""
  offsets = _line_offsets(src)
  spans = sorted(((offsets[a[0] - 1] + a[1], offsets[b[0] - 1] + b[1], t)
                  for a, b, t in edits), reverse=True)
  prev_start = len(src) + 1
  for start, end, text in spans:
    if end > prev_start:
      raise BuildError("overlapping source edits (internal error)")
    src = src[:start] + text + src[end:]
    prev_start = start
  return src


_FROM_RE = re.compile(r"from\s+(.*?)\s*import\b", re.S)


class ImportRewriter:
  """Rewrites a module's imports through `map_module`.

  map_module(absolute dotted name) -> (new name, is_flat_helper) or None.
  A "flat helper" is a test helper module that becomes a top-level module of
  JAX's tests/ directory (imported by bare name).
  """

  def __init__(self, map_module, package: str | None,
               string_renames: dict[str, str] | None = None):
    self.map_module = map_module
    # Words to replace inside string literals: the test modules' old names
    # (a test may match its own file name in an error message's location).
    self.string_renames = string_renames or {}
    self.package = package  # for resolving relative imports; None: keep them
    self.used: set[str] = set()  # original names of the modules rewritten
    self.strings_rewritten = 0
    self.names_rewritten = 0

  def _resolve(self, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
      return node.module
    if self.package is None:
      return None
    base = self.package.split(".")
    if node.level > 1:
      base = base[:-(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))

  def rewrite(self, src: str, filename: str) -> str:
    tree = ast.parse(src, filename)
    lines = src.splitlines(keepends=True)
    names_in_use = {t.string for t in tokenize.generate_tokens(
        io.StringIO(src).readline) if t.type == tokenize.NAME}
    # `import jax_remat_refs` binds `remat_refs`, unless that name is taken.
    bind = PKG if IN_JAX_BIND in names_in_use else IN_JAX_BIND
    edits, spans = [], []
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      new = self._rewrite_import(node, src, lines, bind)
      if new is None:
        continue
      start = (node.lineno, _char_col(lines, node.lineno, node.col_offset))
      end = (node.end_lineno,
             _char_col(lines, node.end_lineno, node.end_col_offset))
      edits.append((start, end, new))
      spans.append((start, end))
    if bind != PKG:
      edits += self._rename_package_name(src, spans, bind)
    edits += self._rewrite_code_in_strings(src)
    return _apply_edits(src, edits)

  # Source code held in string literals (programs a test generates or runs in
  # a subprocess): its `import jax_remat_refs` / `from jax_remat_refs... import`
  # lines, and only those, move to the in-JAX package too.
  _STR_IMPORT_RE = re.compile(
      r"(^|\n|\\n|[\"'])([ \t]*)import %s(?![\w.])" % PKG)
  _STR_FROM_RE = re.compile(
      r"(^|\n|\\n|[\"'])([ \t]*)from %s((?:\.\w+)*) import\b" % PKG)

  def _rewrite_code_in_strings(self, src):
    edits = []
    renames = re.compile(r"\b(%s)\b" % "|".join(
        map(re.escape, self.string_renames))) if self.string_renames else None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
      if tok.type != tokenize.STRING:
        continue
      new = tok.string
      if renames is not None:
        new = renames.sub(lambda m: self.string_renames[m[1]], new)
        if new != tok.string:
          self.names_rewritten += 1
      if PKG not in new:
        if new != tok.string:
          edits.append((tok.start, tok.end, new))
        continue
      before = new
      new = self._STR_IMPORT_RE.sub(
          lambda m: f"{m[1]}{m[2]}import {IN_JAX_PKG} as {PKG}", tok.string)
      new = self._STR_FROM_RE.sub(
          lambda m: f"{m[1]}{m[2]}from {IN_JAX_PKG}{m[3]} import", new)
      if new != before:
        self.strings_rewritten += 1
      if new != tok.string:
        edits.append((tok.start, tok.end, new))
    return edits

  def _segment(self, src, lines, node):
    offsets = _line_offsets(src)
    a = offsets[node.lineno - 1] + _char_col(lines, node.lineno, node.col_offset)
    b = offsets[node.end_lineno - 1] + _char_col(lines, node.end_lineno,
                                                 node.end_col_offset)
    return src[a:b]

  def _rewrite_import(self, node, src, lines, bind) -> str | None:
    if isinstance(node, ast.ImportFrom):
      module = self._resolve(node)
      if module is None:
        return None
      mapped = self.map_module(module)
      segment = self._segment(src, lines, node)
      if mapped is not None and not mapped[1]:
        # from jax_remat_refs[.x] import ... -> from jax._src.remat_refs[.x] ...
        m = _FROM_RE.match(segment)
        self.used.add(module)
        return f"from {mapped[0]} import" + segment[m.end():]
      if mapped is not None and mapped[1] and all(
          self.map_module(f"{module}.{a.name}") is None for a in node.names):
        # from tests.helper import f -> from remat_refs_helper import f
        m = _FROM_RE.match(segment)
        self.used.add(module)
        return f"from {mapped[0]} import" + segment[m.end():]
      # from tests import helper -> import remat_refs_helper as helper
      subs = [(a, self.map_module(f"{module}.{a.name}")) for a in node.names]
      if not any(s for _, s in subs):
        if mapped is not None:
          raise BuildError(f"cannot rewrite import: {segment!r}")
        return None
      stmts = []
      for a, s in subs:
        local = a.asname or a.name
        if s is None:
          raise BuildError(f"cannot rewrite import mixing modules and other "
                           f"names, split it: {segment!r}")
        self.used.add(f"{module}.{a.name}")
        if s[1]:
          stmts.append(f"import {s[0]} as {local}")
        else:
          parent, _, leaf = s[0].rpartition(".")
          stmts.append(f"from {parent} import {leaf}" +
                       ("" if local == leaf else f" as {local}"))
      return "; ".join(stmts)
    # ast.Import
    if not any(self.map_module(a.name) for a in node.names):
      return None
    stmts = []
    for a in node.names:
      s = self.map_module(a.name)
      if s is None:
        stmts.append(f"import {a.name}" + (f" as {a.asname}" if a.asname
                                           else ""))
        continue
      self.used.add(a.name)
      if s[1]:  # import tests.helper [as h]
        if a.asname is None:
          raise BuildError(f"import {a.name} without `as` cannot be kept for "
                           "a flattened test helper; use `from ... import`")
        stmts.append(f"import {s[0]} as {a.asname}")
      elif a.asname is not None:  # import jax_remat_refs[.x] as y
        parent, _, leaf = s[0].rpartition(".")
        stmts.append(f"from {parent} import {leaf} as {a.asname}")
      elif a.name == PKG:  # import jax_remat_refs
        parent, _, leaf = IN_JAX_PKG.rpartition(".")
        stmts.append(f"from {parent} import {leaf}" +
                     ("" if bind == leaf else f" as {bind}"))
      else:  # import jax_remat_refs.x: binds the package, loads x
        parent, _, leaf = IN_JAX_PKG.rpartition(".")
        stmts.append(f"from {parent} import {leaf}" +
                     ("" if bind == leaf else f" as {bind}"))
        # (`import a.b.c` would bind `jax`, maybe shadowing it in a function)
        stmts.append(f"__import__({s[0]!r})")
    return "; ".join(stmts)

  def _rename_package_name(self, src, import_spans, bind):
    """`jax_remat_refs.x` in code -> `remat_refs.x` (strings stay)."""
    edits, prev = [], None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
      if (tok.type == tokenize.NAME and tok.string == PKG and
          not (prev is not None and prev.type == tokenize.OP and
               prev.string == ".") and
          not any(a <= tok.start < b for a, b in import_spans)):
        edits.append((tok.start, tok.end, bind))
      if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
                          tokenize.INDENT, tokenize.DEDENT):
        prev = tok
    return edits


def leftover_package_names(src: str) -> list[str]:
  """Code (not strings/comments) still naming this repo's package."""
  left = []
  for tok in tokenize.generate_tokens(io.StringIO(src).readline):
    if tok.type == tokenize.NAME and tok.string == PKG:
      left.append(f"line {tok.start[0]}")
  return left


def _cut(src: str, begin: int, end: int) -> str:
  """Removes whole lines src[begin:end]; the blank lines around them merge
  (as many remain as on the wider side)."""
  head, tail = src[:begin], src[end:]
  before = len(head) - len(head.rstrip("\n")) - 1  # blank lines above
  after = len(tail) - len(tail.lstrip("\n"))       # blank lines below
  if before < 0:
    return head + tail
  return head.rstrip("\n") + "\n" * (1 + max(before, after)) + \
      tail.lstrip("\n")


def strip_detection_block(src: str, filename: str) -> str:
  begin = src.find(DETECT_BEGIN)
  if begin < 0:
    return src
  end = src.find(DETECT_END, begin)
  if end < 0:
    raise BuildError(f"{filename}: '{DETECT_BEGIN}' without '{DETECT_END}'")
  begin = src.rfind("\n", 0, begin) + 1
  end = src.find("\n", end) + 1
  return _cut(src, begin, end)


_CHECK_CALL_RE = re.compile(
    r"^[ \t]*(?:[A-Za-z_][\w.]*\.)?check_jax_version\(\)[ \t]*(?:#.*)?\n",
    re.M)


def strip_version_check(src: str) -> tuple[str, int]:
  n = 0
  while m := _CHECK_CALL_RE.search(src):
    src, n = _cut(src, m.start(), m.end()), n + 1
  return src, n


OVERLAY_ONLY_LIST = pathlib.Path(__file__).resolve().parent / "overlay_only.txt"


def overlay_only_entries() -> list[str]:
  if not OVERLAY_ONLY_LIST.is_file():
    return []
  return [line.strip() for line in OVERLAY_ONLY_LIST.read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def strip_listed(src: str, path: pathlib.Path, entries: list[str]
                 ) -> tuple[str, list[str]]:
  """Drops the definitions `entries` ("Class::method", "Class", "function")
  name; a name not found is an error (the list went stale)."""
  tree = ast.parse(src, str(path))
  offsets, cuts = _line_offsets(src), []
  for entry in entries:
    scope, node = tree.body, None
    for name in entry.split("::"):
      node = next((n for n in scope if isinstance(
          n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and
                   n.name == name), None)
      if node is None:
        raise BuildError(f"{OVERLAY_ONLY_LIST.name}: {path.name}::{entry} "
                         "not found; update the list")
      scope = getattr(node, "body", [])
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    cuts.append((first, node.end_lineno))
  for first, last in sorted(cuts, reverse=True):
    src = _cut(src, offsets[first - 1], offsets[last])
  return src, list(entries)


def _decorator_name(node) -> str:
  while isinstance(node, ast.Call):
    node = node.func
  if isinstance(node, ast.Attribute):
    return node.attr
  return getattr(node, "id", "")


def strip_overlay_only(src: str, filename: str) -> tuple[str, list[str]]:
  """Drops tests decorated with `@overlay_only` (tests of the out-of-tree
  package itself, e.g. that importing it activates the rules)."""
  tree = ast.parse(src, filename)
  cuts = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                  ) and any(_decorator_name(d) == OVERLAY_ONLY
                            for d in node.decorator_list):
      first = min(d.lineno for d in node.decorator_list)
      cuts.append((first, node.end_lineno, node.name))
  offsets = _line_offsets(src)
  for first, last, _ in sorted(cuts, reverse=True):
    src = _cut(src, offsets[first - 1], offsets[last])
  return src, [name for _, _, name in sorted(cuts)]


# --------------------------------------------------------------------------
# the package -> jax/_src/remat_refs

def license_header(year: int) -> str:
  return textwrap.dedent(f"""\
      # Copyright {year} The JAX Authors.
      #
      # Licensed under the Apache License, Version 2.0 (the "License");
      # you may not use this file except in compliance with the License.
      # You may obtain a copy of the License at
      #
      #     https://www.apache.org/licenses/LICENSE-2.0
      #
      # Unless required by applicable law or agreed to in writing, software
      # distributed under the License is distributed on an "AS IS" BASIS,
      # WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
      # See the License for the specific language governing permissions and
      # limitations under the License.

      """)


def _excluded(stem: str) -> bool:
  return any(fnmatch.fnmatch(stem, pat) for pat in EXCLUDED_MODULES)


def package_modules() -> tuple[dict[str, pathlib.Path], list[str]]:
  """{dotted name under the package: file} of what goes into JAX, and the
  names left out."""
  root = REPO / PKG
  mods, left_out = {}, []
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root)
    if "__pycache__" in rel.parts:
      continue
    if any(not (root.joinpath(*rel.parts[:i]) / "__init__.py").is_file()
           for i in range(1, len(rel.parts))):
      continue  # not inside a (sub)package
    parts = list(rel.with_suffix("").parts)
    if any(_excluded(p) for p in parts):
      left_out.append(".".join(parts))
      continue
    mods[".".join(parts)] = path
  if "__init__" not in mods:
    raise BuildError(f"{root}/__init__.py not found")
  return mods, left_out


def _in_jax_module(name: str) -> str | None:
  if name == PKG:
    return IN_JAX_PKG
  if name.startswith(PKG + "."):
    return IN_JAX_PKG + name[len(PKG):]
  return None


def build_package(year: int):
  """{JAX-root-relative path: new text}, notes, the modules left out."""
  mods, left_out = package_modules()
  excluded = {f"{PKG}.{m}" for m in left_out}
  files, notes, check_calls, in_text = {}, [], 0, []

  def map_module(name):
    if name in excluded or any(name.startswith(e + ".") for e in excluded):
      raise BuildError(f"a module bound for JAX imports {name}, which is left "
                       f"out of the patch ({', '.join(EXCLUDED_MODULES)})")
    m = _in_jax_module(name)
    return None if m is None else (m, False)

  for dotted, path in mods.items():
    parts = dotted.split(".")
    src = path.read_text(encoding="utf-8")
    src = strip_detection_block(src, str(path))
    src, n = strip_version_check(src)
    check_calls += n
    rewriter = ImportRewriter(map_module, package=None)
    src = rewriter.rewrite(src, str(path))
    if rewriter.strings_rewritten:
      notes.append(f"{path.relative_to(REPO)}: imports of {PKG} inside "
                   f"{rewriter.strings_rewritten} string(s) rewritten")
    left = leftover_package_names(src)
    if left:
      raise BuildError(f"{path}: still names {PKG} in code at "
                       f"{', '.join(left)} after rewriting; extend "
                       "build/make_patch.py or avoid the dynamic reference")
    if PKG in src:
      in_text.append(path.name)
    rel = IN_JAX_DIR + "/" + "/".join(parts) + ".py"
    text = license_header(year) + src
    compile(text, rel, "exec")
    files[rel] = text
  if in_text:
    notes.append(f"'{PKG}' still named in strings/comments (messages, docs) "
                 f"of {', '.join(in_text)}")
  all_text = "".join(files.values())
  if re.search(r"check_jax_version\(\)", all_text.replace(
      "def check_jax_version()", "")):
    raise BuildError("a check_jax_version() call is left in the in-JAX copy "
                     "in a form build/make_patch.py does not strip")
  if not check_calls:
    notes.append("no check_jax_version() call found to strip")
  init = ast.parse(files[f"{IN_JAX_DIR}/__init__.py"])
  if not any(isinstance(n, ast.FunctionDef) and n.name == "activate"
             for n in init.body):
    raise BuildError(f"{PKG}/__init__.py defines no activate(); the hook in "
                     "ad_checkpoint.py calls it")
  return files, notes, left_out


AD_CHECKPOINT_HOOK = '''

# Ref-aware rules for remat_p (jax/_src/remat_refs): a remat body's effects on
# refs it did not create (arguments or closed over) happen once, in the forward
# pass, and the rematerializing pass reads private copies of the values they
# had at remat entry. Those rules import modules that import this one (control
# flow, state discharge), so jax/__init__.py installs them once it has loaded
# everything, by calling this function.
def _install_ref_aware_remat_rules() -> None:
  from jax._src import remat_refs  # pylint: disable=g-import-not-at-top
  remat_refs.activate()
'''

JAX_INIT_HOOK = '''
# Install remat's ref-aware rules (jax/_src/remat_refs) now that every module
# they use has been imported.
from jax._src.ad_checkpoint import _install_ref_aware_remat_rules
_install_ref_aware_remat_rules()
del _install_ref_aware_remat_rules
'''


def build_hooks(jax_dir: pathlib.Path) -> dict[str, tuple[str, str]]:
  """{path: (pristine text, patched text)} of the edited JAX files."""
  out = {}
  for rel, hook in (("jax/_src/ad_checkpoint.py", AD_CHECKPOINT_HOOK),
                    ("jax/__init__.py", JAX_INIT_HOOK)):
    old = (jax_dir.parent / rel).read_text(encoding="utf-8")
    base = old if old.endswith("\n") else old + "\n"
    out[rel] = (old, base + hook)
  return out


# --------------------------------------------------------------------------
# tests/test_*.py -> JAX's tests/remat_refs_*_test.py

def _test_module_file(name: str) -> pathlib.Path | None:
  """File of module `name` (tests.x.y) in this repo, or None."""
  parts = name.split(".")
  if parts[0] != "tests":
    return None
  base = REPO.joinpath(*parts)
  if base.with_suffix(".py").is_file():
    return base.with_suffix(".py")
  if (base / "__init__.py").is_file():
    return base / "__init__.py"
  return None


def _flat_name(name: str) -> str:
  """tests.fuzz.gen -> remat_refs_fuzz_gen; tests.test_x -> remat_refs_x_test."""
  parts = name.split(".")[1:]
  if len(parts) == 1 and parts[0].startswith("test_"):
    stem = parts[0][len("test_"):]
    stem = stem[len(TEST_PREFIX):] if stem.startswith(TEST_PREFIX) else stem
    return f"{TEST_PREFIX}{stem}_test"
  return TEST_PREFIX + "_".join(p.strip("_") for p in parts)


def _device_count_requested() -> int | None:
  conftest = REPO / "tests" / "conftest.py"
  if not conftest.is_file():
    return None
  m = re.search(r"xla_force_host_platform_device_count=(\d+)",
                conftest.read_text(encoding="utf-8"))
  return int(m.group(1)) if m else None


def _jax_style_setup(src: str, path: pathlib.Path, devices: int | None) -> str:
  """After the imports: absl flag parsing and the CPU devices conftest.py
  asks for, the way JAX's own test files do it."""
  tree = ast.parse(src, str(path))
  body = list(tree.body)
  last_import = None
  for i, node in enumerate(body):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      last_import = node
    elif i == 0 and isinstance(node, ast.Expr) and isinstance(
        getattr(node, "value", None), ast.Constant):
      continue  # docstring
    else:
      break
  if last_import is None:
    raise BuildError(f"{path}: no import block to append JAX's test setup to")
  bound = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      bound |= {a.asname or a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      bound |= {a.asname or a.name for a in node.names}
  add = []
  if "jax" not in bound:
    add.append("import jax")
  if devices and "jtu" not in bound:
    add.append("from jax._src import test_util as jtu")
  add += ["", "jax.config.parse_flags_with_absl()"]
  if devices:
    add.append(f"jtu.request_cpu_devices({devices})")
  lines = src.splitlines(keepends=True)
  at = last_import.end_lineno
  return "".join(lines[:at]) + "\n".join(add) + "\n" + "".join(lines[at:])


# What JAX's own tests may import besides the standard library.
JAX_TEST_DEPS = {"__future__", "jax", "jaxlib", "numpy", "absl", "hypothesis",
                 "scipy", "ml_dtypes", "opt_einsum", "pytest", "tests", PKG}


def _foreign_imports(path: pathlib.Path, left_out: list[str]) -> list[str]:
  """Imports that keep a test file out of JAX's tests/: modules of this
  package left out of the patch, third-party packages JAX does not test with."""
  bad = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      root = name.split(".")[0]
      if root not in JAX_TEST_DEPS and root not in sys.stdlib_module_names:
        bad.append(name)
      elif root == PKG and any(name == f"{PKG}.{m}" or name.startswith(
          f"{PKG}.{m}.") for m in left_out):
        bad.append(name)
  return sorted(set(bad))


def build_tests(year: int, left_out: list[str]
                ) -> tuple[dict[str, str], dict[str, str], list[str]]:
  """({JAX-root path: text}, {repo test file name: converted name}, notes)."""
  sources = []
  devices = _device_count_requested()
  files, names, notes = {}, {}, []
  for path in sorted((REPO / "tests").glob("test_*.py")):
    bad = _foreign_imports(path, left_out)
    if bad:
      notes.append(f"{path.relative_to(REPO)} left out of JAX's tests/ "
                   f"(imports {', '.join(bad)})")
    else:
      sources.append(path)
  todo = [(f"tests.{p.stem}", p) for p in sources]
  renames = {p.stem: _flat_name(f"tests.{p.stem}") for p in sources}
  seen = set()

  def map_module(name):
    m = _in_jax_module(name)
    if m is not None:
      return m, False
    if not name.startswith("tests."):
      return None
    f = _test_module_file(name)
    if f is None:
      return None  # a name inside a module, not a module
    if f.name == "conftest.py":
      raise BuildError(f"a test imports {name}; conftest.py is not carried "
                       "into JAX's tests/")
    return _flat_name(name), True

  while todo:
    name, path = todo.pop(0)
    seen.add(name)
    package = name.rpartition(".")[0] if path.name != "__init__.py" else name
    src = path.read_text(encoding="utf-8")
    src, dropped = strip_overlay_only(src, str(path))
    rel_name = path.relative_to(REPO / "tests").as_posix()
    listed = [e.partition("::")[2] for e in overlay_only_entries()
              if e.partition("::")[0] == rel_name]
    if any(not e for e in listed):
      continue  # the whole file is overlay-only
    src, more = strip_listed(src, path, listed)
    dropped += more
    if dropped:
      notes.append(f"{path.relative_to(REPO)}: left out @{OVERLAY_ONLY} "
                   f"{', '.join(dropped)}")
    rewriter = ImportRewriter(map_module, package=package,
                              string_renames=renames)
    src = rewriter.rewrite(src, str(path))
    if rewriter.strings_rewritten:
      notes.append(f"{path.relative_to(REPO)}: imports of {PKG} inside "
                   f"{rewriter.strings_rewritten} string(s) (generated or "
                   "subprocess code) now import jax._src.remat_refs")
    if rewriter.names_rewritten:
      notes.append(f"{path.relative_to(REPO)}: test file names inside "
                   f"{rewriter.names_rewritten} string(s) follow the renaming")
    for used in sorted(rewriter.used):  # test helpers it imports come along
      helper = _test_module_file(used)
      if used.startswith("tests.") and helper and used not in seen:
        seen.add(used)
        todo.append((used, helper))
    left = leftover_package_names(src)
    if left:
      raise BuildError(f"{path}: still names {PKG} in code at "
                       f"{', '.join(left)} after rewriting")
    if path.name.startswith("test_"):
      src = _jax_style_setup(src, path, devices)
    flat = _flat_name(name)
    rel = f"tests/{flat}.py"
    text = license_header(year) + src
    compile(text, rel, "exec")
    files[rel] = text
    names[path.relative_to(REPO / "tests").as_posix()] = f"{flat}.py"
    if not path.name.startswith("test_"):
      notes.append(f"test helper {path.relative_to(REPO)} -> {rel}")
  return files, names, notes


# --------------------------------------------------------------------------
# the patch

def _diff_lines(lines: list[str]) -> list[str]:
  if lines and not lines[-1].endswith("\n"):
    lines = lines[:-1] + [lines[-1] + "\n", "\\ No newline at end of file\n"]
  return lines


def unified_patch(changes: dict[str, tuple[str | None, str]]) -> str:
  """git-style diff of {path: (old text or None for new, new text)}."""
  out = []
  for rel in sorted(changes):
    old, new = changes[rel]
    out.append(f"diff --git a/{rel} b/{rel}\n")
    if old is None:
      out.append("new file mode 100644\n")
    hunks = list(difflib.unified_diff(
        (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
        "/dev/null" if old is None else f"a/{rel}", f"b/{rel}", n=3))
    if not hunks:
      raise BuildError(f"{rel}: no change")
    # unified_diff writes '--- name\n'; keep its headers, fix no-EOL markers.
    body = []
    for line in hunks:
      if line.endswith("\n"):
        body.append(line)
      else:
        body.extend([line + "\n", "\\ No newline at end of file\n"])
    out.extend(body)
  return "".join(out)


# --------------------------------------------------------------------------
# self-check

PLUGIN = '''
"""pytest plugin of the make_patch self-check (mode in REMAT_REFS_SELFCHECK)."""
import importlib.abc
import os
import sys

MODE = os.environ["REMAT_REFS_SELFCHECK"]
ROOT = os.environ["REMAT_REFS_SELFCHECK_ROOT"]


class _NoOverlay(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "%(pkg)s" or name.startswith("%(pkg)s."):
      raise ImportError(f"self-check: {name} must not be imported here; the "
                        "patched JAX is under test alone")
    return None


if MODE == "jax-only":
  sys.meta_path.insert(0, _NoOverlay())


def pytest_collection_finish(session):
  import jax
  if not os.path.realpath(jax.__file__).startswith(os.path.realpath(ROOT)):
    raise RuntimeError(f"self-check: imported {jax.__file__}, not the "
                       f"patched copy under {ROOT}")
  if "%(in_jax)s" not in sys.modules:
    raise RuntimeError("self-check: importing jax did not load %(in_jax)s")
  if MODE == "overlay":
    import %(pkg)s
    from jax._src import remat_refs as in_jax
    if %(pkg)s._rules is not in_jax._rules:
      raise RuntimeError("self-check: %(pkg)s did not alias %(in_jax)s")
''' % dict(pkg=PKG, in_jax=IN_JAX_PKG)

SEED_CHECK = '''
"""Seed program of the core issue; prints what it gives, as JSON."""
import importlib.abc
import json
import sys

overlay = sys.argv[1] == "overlay"


class _NoOverlay(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "%(pkg)s" or name.startswith("%(pkg)s."):
      raise ImportError(f"{name} blocked by the self-check")
    return None


if not overlay:
  sys.meta_path.insert(0, _NoOverlay())

import jax  # noqa: E402

if overlay:
  import %(pkg)s  # noqa: F401


def seed(y, x_ref):
  out = y * x_ref[...]
  x_ref[...] += 1
  return out


def run(wrap):
  x_ref = jax.new_ref(1.)
  g = jax.grad(wrap(seed))(1., x_ref)
  return float(g), float(x_ref[...])


grad, ref = run(jax.remat)
oracle_grad, oracle_ref = run(lambda f: f)  # the same program without remat
print(json.dumps(dict(
    jax_file=jax.__file__, jax_version=jax.__version__,
    in_jax_copy_loaded="%(in_jax)s" in sys.modules,
    overlay_loaded="%(pkg)s" in sys.modules,
    grad=grad, ref=ref, no_remat_grad=oracle_grad, no_remat_ref=oracle_ref)))
''' % dict(pkg=PKG, in_jax=IN_JAX_PKG)


def _run(cmd, *, cwd, env=None, check=True, capture=False):
  r = subprocess.run(cmd, cwd=cwd, env=env, text=True,
                     stdout=subprocess.PIPE if capture else None,
                     stderr=subprocess.STDOUT if capture else None)
  if check and r.returncode != 0:
    tail = ("\n" + r.stdout[-4000:]) if capture and r.stdout else ""
    raise BuildError(f"failed (exit {r.returncode}): {' '.join(map(str, cmd))}"
                     f"{tail}")
  return r


def _env(pythonpath: list[pathlib.Path], **extra) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
  env["PYTHONDONTWRITEBYTECODE"] = "1"
  env.pop("JAX_REMAT_REF_EFFECTS", None)  # the default mode, "once"
  devices = _device_count_requested()
  if devices:
    flag = f"--xla_force_host_platform_device_count={devices}"
    if flag not in env.get("XLA_FLAGS", ""):
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
  env.update(extra)
  return env


def selected_tests() -> list[str] | None:
  """Repo test files (relative to tests/) the self-check runs; None: none."""
  spec = os.environ.get("PATCH_TESTS", "all").strip() or "all"
  tests = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
  if spec == "all":
    return tests
  if spec == "none":
    return None
  items = [i for i in re.split(r"[,\s]+", spec) if i]
  # Only exclusions ("-fuzz"): everything else.
  chosen = [] if any(not i.startswith("-") for i in items) else list(tests)
  for item in items:
    drop = item.startswith("-")
    item = item.lstrip("-")
    pats = {item, f"{item}.py", f"test_{item}", f"test_{item}.py",
            item.removeprefix("tests/")}
    hit = [t for t in tests if any(fnmatch.fnmatch(t, p) for p in pats)]
    if not hit:
      raise BuildError(f"PATCH_TESTS: {item!r} matches none of {tests}")
    if drop:
      chosen = [t for t in chosen if t not in hit]
    else:
      chosen += [t for t in hit if t not in chosen]
  return chosen


def selected_suites() -> set[str]:
  spec = os.environ.get("PATCH_SUITES", "jax,repo").strip() or "jax,repo"
  suites = set(re.split(r"[,\s]+", spec)) - {""}
  if not suites <= {"jax", "repo"}:
    raise BuildError(f"PATCH_SUITES: {spec!r}; use 'jax', 'repo' or both")
  return suites


def seed_check(tmp, helper, overlay: bool, *, expect_in_jax: bool,
               expect: tuple[float, float]) -> dict:
  r = _run([sys.executable, str(helper / "seed_check.py"),
            "overlay" if overlay else "none"],
           cwd=tmp, env=_env([tmp] + ([REPO] if overlay else [])),
           capture=True)
  got = json.loads(r.stdout.strip().splitlines()[-1])
  problems = []
  if not os.path.realpath(got["jax_file"]).startswith(os.path.realpath(tmp)):
    problems.append(f"imported {got['jax_file']}, not the copy in {tmp}")
  if got["in_jax_copy_loaded"] != expect_in_jax:
    problems.append(f"{IN_JAX_PKG} loaded: {got['in_jax_copy_loaded']}")
  if got["overlay_loaded"] != overlay:
    problems.append(f"{PKG} loaded: {got['overlay_loaded']}")
  if (got["no_remat_grad"], got["no_remat_ref"]) != (SEED_GRAD, SEED_REF):
    problems.append("the program without remat gives "
                    f"{got['no_remat_grad']}/{got['no_remat_ref']}, "
                    f"expected {SEED_GRAD}/{SEED_REF}")
  if (got["grad"], got["ref"]) != expect:
    problems.append(f"grad/ref {got['grad']}/{got['ref']}, expected "
                    f"{expect[0]}/{expect[1]}")
  if problems:
    raise BuildError("seed check: " + "; ".join(problems))
  return got


class PytestRun:
  """One pytest process; output to a log file, results from its JUnit XML."""

  def __init__(self, files, *, cwd, env, label, tmp, log_path, plugin=True):
    self.files, self.label, self.log_path = files, label, log_path
    targets = [f for f in files if not f.startswith("-")]
    log(f"  pytest ({label}): {len(targets)} " +
        ("file(s)" if all(f.endswith(".py") for f in targets) else "test(s)") +
        (f", {len(files) - len(targets)} deselected"
         if len(files) > len(targets) else "") +
        f"; log: {log_path.relative_to(REPO)}")
    self.xml = pathlib.Path(tempfile.mkstemp(suffix=".xml", dir=tmp)[1])
    self.t0 = time.perf_counter()
    self.out = open(log_path, "w", encoding="utf-8")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *(["-p", "remat_refs_selfcheck_plugin"] if plugin else []),
         f"--junitxml={self.xml}", *files],
        cwd=cwd, env=env, stdout=self.out, stderr=subprocess.STDOUT, text=True)

  def result(self) -> dict:
    code = self.proc.wait()
    self.out.close()
    dt = round(time.perf_counter() - self.t0, 1)
    counts, failed_ids = {}, []
    try:
      root = ElementTree.parse(self.xml).getroot()
      suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
      for suite in suites:
        for k in ("tests", "failures", "errors", "skipped"):
          counts[k] = counts.get(k, 0) + int(suite.get(k, 0))
        for case in suite.iter("testcase"):
          if case.find("failure") is None and case.find("error") is None:
            continue
          # classname "tests.test_core.SomeTest" -> tests/test_core.py::SomeTest
          parts = case.get("classname", "").split(".")
          if len(parts) >= 2:
            failed_ids.append("::".join(
                [f"{parts[0]}/{parts[1]}.py", *parts[2:], case.get("name")]))
    except (OSError, ElementTree.ParseError):
      pass
    counts["passed"] = counts.get("tests", 0) - sum(
        counts.get(k, 0) for k in ("failures", "errors", "skipped"))
    tail = self.log_path.read_text(encoding="utf-8").strip().splitlines()
    log(f"  ... {self.label}: exit {code}, {counts['passed']} passed, "
        f"{counts.get('failures', 0)} failed, {counts.get('errors', 0)} "
        f"errors, {counts.get('skipped', 0)} skipped/xfailed in {dt}s")
    if code != 0:
      summary = [l for l in tail if l.startswith(("FAILED", "ERROR"))]
      for line in (summary or tail[-15:])[:30]:
        log(f"      {line}")
    return dict(seconds=dt, exit=code, failed_ids=failed_ids,
                log=str(self.log_path.relative_to(REPO)), **counts)


def _pytest(files, **kwargs) -> dict:
  return PytestRun(files, **kwargs).result()


def triage(runs, test_names, helper, log_dir) -> str:
  """Reruns the tests that failed on the patched JAX with this repo's package
  on the venv's pristine JAX: failures seen there too are not the patch's."""
  back = {pathlib.PurePosixPath(v).stem: k for k, v in test_names.items()}
  where: dict[str, list[str]] = {}  # repo test id -> runs it failed in
  for key, run in runs:
    for node in run.get("failed_ids", []):
      path, _, rest = node.partition("::")
      stem = pathlib.PurePosixPath(path).stem
      nid = f"tests/{back.get(stem, stem + '.py')}::{rest}"
      where.setdefault(nid, []).append(key)
  if not where:
    return "no failed test ids to rerun"
  res = _pytest(list(where), cwd=REPO, tmp=helper, plugin=False,
                label="failed ones again, this repo's package on pristine JAX",
                env=_env([REPO]), log_path=log_dir / "triage.log")
  also = set(res["failed_ids"])
  only_patch = [i for i in where if i not in also]
  lines = [f"{len(where)} failing test(s) on the patched JAX; "
           f"{len(where) - len(only_patch)} fail with the overlay on pristine "
           f"JAX too, {len(only_patch)} only with the patch"]
  lines += [f"    only with the patch ({', '.join(where[i])}): {i}"
            for i in only_patch]
  return "\n".join(lines)


def self_check(jax_dir, record, patch_path, changes, test_names,
               status_version: str) -> dict:
  status = dict(steps={})
  keep = os.environ.get("PATCH_KEEP_TMP", "") not in ("", "0")
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="jax-remat-refs-patch-"))
  try:
    helper = tmp / "_selfcheck"
    helper.mkdir()
    (helper / "remat_refs_selfcheck_plugin.py").write_text(PLUGIN)
    (helper / "seed_check.py").write_text(SEED_CHECK)
    t0 = time.perf_counter()
    shutil.copytree(jax_dir, tmp / "jax", symlinks=True)
    problems = pristine_problems(tmp, record)
    if problems:
      raise BuildError("the copy of jax is not pristine: " + problems[0])
    log(f"  copied pristine jax to {tmp} ({time.perf_counter() - t0:.1f}s)")

    # No repository above tmp may capture the paths (git apply would then
    # skip files outside the current directory without a word).
    git_env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp.parent))
    r = _run(["git", "apply", "--check", "-v", str(patch_path)], cwd=tmp,
             env=git_env, capture=True)
    checked = r.stdout.count("Checking patch ")
    if checked != len(changes):
      raise BuildError(f"git apply --check looked at {checked} of "
                       f"{len(changes)} files:\n{r.stdout}")
    if shutil.which("patch"):
      apply_cmd = ["patch", "-p1", "-s", "-i", str(patch_path)]
      revert_cmd = ["patch", "-R", "-p1", "-s", "-i", str(patch_path)]
      _run(apply_cmd[:2] + ["--dry-run"] + apply_cmd[2:], cwd=tmp,
           capture=True)
    else:  # no `patch` program: apply it with git too
      apply_cmd = ["git", "apply", str(patch_path)]
      revert_cmd = ["git", "apply", "-R", str(patch_path)]
    _run(apply_cmd, cwd=tmp, env=git_env, capture=True)
    for rel, (_, new) in changes.items():
      if (tmp / rel).read_text(encoding="utf-8") != new:
        raise BuildError(f"after `{' '.join(apply_cmd[:2])}`, {rel} differs "
                         "from what was built")
    status["steps"]["apply"] = (f"git apply --check ({checked} files), "
                                f"{' '.join(apply_cmd[:2])}: ok")
    log(f"  patch applies: git apply --check ({checked} files), "
        f"{' '.join(apply_cmd[:2])}")

    got = seed_check(tmp, helper, overlay=False, expect_in_jax=True,
                     expect=(SEED_GRAD, SEED_REF))
    status["steps"]["seed_patched"] = got
    log(f"  patched JAX alone, seed program: grad {got['grad']} ref "
        f"{got['ref']} (without remat: {got['no_remat_grad']} "
        f"{got['no_remat_ref']})")

    chosen = selected_tests()
    suites = selected_suites()
    failed = []
    if chosen is None:
      log("  PATCH_TESTS=none: tests skipped")
      status["steps"]["tests"] = "skipped (PATCH_TESTS=none)"
    else:
      status["steps"]["tests_selected"] = os.environ.get("PATCH_TESTS", "all")
    in_jax = [f"tests/{test_names[t]}" for t in chosen or ()
              if t in test_names]
    log_dir = OUT / f"selfcheck-{status_version}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    runs = {}
    # The two runs go side by side (separate processes, separate logs).
    if in_jax and "jax" in suites:
      runs["in_jax_tests"] = PytestRun(
          in_jax, cwd=tmp, tmp=helper, log_path=log_dir / "in_jax_tests.log",
          label="JAX's tests/remat_refs_*_test.py, overlay blocked",
          env=_env([tmp, helper], REMAT_REFS_SELFCHECK="jax-only",
                   REMAT_REFS_SELFCHECK_ROOT=str(tmp)))
    if chosen is not None and "repo" in suites:
      repo = [f"tests/{t}" for t in chosen]
      repo += [f"--deselect=tests/{e}" for e in overlay_only_entries()
               if e.partition("::")[0] in chosen]
      runs["repo_tests"] = PytestRun(
          repo, cwd=REPO, tmp=helper, log_path=log_dir / "repo_tests.log",
          label="this repo's tests/ on the patched JAX",
          env=_env([tmp, helper, REPO], REMAT_REFS_SELFCHECK="overlay",
                   REMAT_REFS_SELFCHECK_ROOT=str(tmp)))
    status["steps"]["overlay_only"] = overlay_only_entries()
    for key, run in runs.items():
      status["steps"][key] = dict(files=run.files, **run.result())
      failed.append((key, status["steps"][key]))
    # Both runs report before a failure stops the build.
    failed = [(k, r) for k, r in failed if r["exit"] != 0]
    if failed:
      status["steps"]["triage"] = triage(failed, test_names, helper, log_dir)
      failed = ["tests failed on the patched JAX: " +
                status["steps"]["triage"]]

    _run(revert_cmd, cwd=tmp, env=git_env, capture=True)
    for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
      if d.name == "__pycache__" and not any(
          f.suffix != ".pyc" for f in d.iterdir()) and not any(
          (d.parent / (f.name.split(".")[0] + ".py")).exists()
          for f in d.iterdir()):
        shutil.rmtree(d)  # caches of files the reverse patch removed
      if d.exists() and not any(d.iterdir()):
        d.rmdir()
    problems = pristine_problems(tmp, record)
    if problems:
      raise BuildError("after `patch -R` the copy is not pristine: " +
                       "; ".join(problems[:5]))
    status["steps"]["revert"] = (f"{' '.join(revert_cmd[:3])}: the copy "
                                 "matches the wheel RECORD")
    log(f"  {' '.join(revert_cmd[:3])}: the copy matches the wheel RECORD "
        "again")
    got = seed_check(tmp, helper, overlay=False, expect_in_jax=False,
                     expect=(UPSTREAM_GRAD, UPSTREAM_REF))
    status["steps"]["seed_reverted"] = got
    log(f"  reverted JAX, no overlay, seed program: grad {got['grad']} ref "
        f"{got['ref']} (upstream's answer)")
    got = seed_check(tmp, helper, overlay=True, expect_in_jax=False,
                     expect=(SEED_GRAD, SEED_REF))
    status["steps"]["seed_reverted_overlay"] = got
    log(f"  reverted JAX + overlay, seed program: grad {got['grad']} ref "
        f"{got['ref']} (same as the patch)")
    if failed:
      raise BuildError(failed[0])
  finally:
    for run in locals().get("runs", {}).values():
      if run.proc.poll() is None:  # interrupted: stop what this started
        run.proc.kill()
        run.proc.wait()
    if keep:
      log(f"  kept {tmp}")
    else:
      shutil.rmtree(tmp, ignore_errors=True)
  return status


# --------------------------------------------------------------------------
# PR description

def _fmt(v):
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def _is_record(v) -> bool:
  return isinstance(v, dict) and bool(v) and all(
      isinstance(x, (str, int, float, bool)) or x is None for x in v.values())


def _tables(data) -> dict[str, list[tuple[str, dict]]]:
  """Flat records of a nested JSON document, grouped into tables.

  A dict whose values are all records is one table named by its key (e.g.
  "rows": one row per variant); a record elsewhere joins the table named by
  its own key (e.g. "ratios": one row per workload)."""
  tables: dict[str, list[tuple[str, dict]]] = {}

  def walk(node, path):
    if not isinstance(node, dict):
      return
    for k, v in node.items():
      if isinstance(v, dict) and v and all(_is_record(x) for x in v.values()):
        for label, rec in v.items():
          tables.setdefault(str(k), []).append(
              (" / ".join(path + [str(label)]), rec))
      elif _is_record(v):
        tables.setdefault(str(k), []).append((" / ".join(path) or "-", v))
      else:
        walk(v, path + [str(k)])

  walk(data if isinstance(data, dict) else {"results": data}, [])
  return tables


def _markdown_table(rows: list[tuple[str, dict]]) -> list[str]:
  cols = []
  for _, rec in rows:
    cols += [k for k in rec if k not in cols]
  parts = [label.split(" / ") for label, _ in rows]
  common = 0  # leading label parts every row shares ("results") go
  while all(len(p) > common + 1 and p[common] == parts[0][common]
            for p in parts):
    common += 1
  out = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for p, (_, rec) in zip(parts, rows):
    label = " / ".join(p[common:]).replace("|", "\\|")
    out.append(f"| {label} | " + " | ".join(
        _fmt(rec[c]) if c in rec else "" for c in cols) + " |")
  return out


def benchmark_section() -> str:
  files = sorted((REPO / "benchmarks" / "results").glob("*.json"))
  if not files:
    return "None measured yet (no benchmarks/results/*.json when this was built).\n"
  out = []
  runner = REPO / "benchmarks" / "run.py"
  if runner.is_file():
    doc = ast.get_docstring(ast.parse(runner.read_text(encoding="utf-8")))
    if doc:
      out += ["From `benchmarks/run.py`:", "", "```", doc.strip(), "```", ""]
  for f in files:
    try:
      data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      out += [f"`{f.name}`: unreadable ({e}).", ""]
      continue
    meta = ""
    if isinstance(data, dict):
      meta = ", ".join(f"{k}: {_fmt(v)}" for k, v in data.items()
                       if isinstance(v, (str, int, float, bool)))
    out += [f"### `benchmarks/results/{f.name}`" + (f" ({meta})" if meta
                                                     else ""), ""]
    tables = _tables(data)
    if not tables:
      out += ["(no tabular records)", ""]
    # Short tables (summaries) in full, long ones folded.
    for name, rows in sorted(tables.items(), key=lambda kv: len(kv[1])):
      if len(rows) <= 20:
        out += [f"{name}:", "", *_markdown_table(rows), ""]
      else:
        out += [f"<details><summary>{name} ({len(rows)} rows)</summary>", "",
                *_markdown_table(rows), "", "</details>", ""]
  return "\n".join(out)


def _semantics_text() -> str:
  path = REPO / PKG / "_semantics.py"
  if not path.is_file():
    return ""
  doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
  return doc.strip() + "\n"


def _module_summaries(pkg_files) -> list[str]:
  out = []
  for rel in sorted(pkg_files):
    doc = ast.get_docstring(ast.parse(pkg_files[rel])) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    out.append(f"- `{rel}`" + (f": {first}" if first else ""))
  return out


def _count_tests(test_files) -> int:
  n = 0
  for text in test_files.values():
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ClassDef):
        n += sum(1 for b in node.body if isinstance(
            b, (ast.FunctionDef, ast.AsyncFunctionDef)) and
                 b.name.startswith("test"))
  return n


def _status_rows() -> list[str]:
  rows = []
  for f in sorted(OUT.glob("selfcheck-*.json")):
    st = json.loads(f.read_text(encoding="utf-8"))
    patch = OUT / st["patch"]
    stale = (not patch.is_file() or
             _b64_sha256(patch.read_bytes()) != st.get("patch_sha256"))
    steps = st.get("steps", {})
    narrowed = steps.get("tests_selected", "all") != "all"
    def t(key):
      s = steps.get(key)
      if not isinstance(s, dict) or "seconds" not in s:
        return "not run"
      bad = s.get("failures", 0) + s.get("errors", 0)
      return (f"{s.get('passed', '?')} passed, " +
              (f"**{bad} failed**, " if bad or s.get("exit") else "") +
              f"{s.get('skipped', 0)} skipped, "
              f"{s['seconds']}s" +
              (f" (PATCH_TESTS={steps['tests_selected']})" if narrowed else ""))
    def seed(key):
      s = steps.get(key, {})
      return f"{s['grad']} / {s['ref']}" if "grad" in s else "-"
    rows.append(
        f"| {st['jax_version']} | `{st['patch']}`{' (stale)' if stale else ''} "
        f"| {st.get('result', '?')} | {seed('seed_patched')} "
        f"| {seed('seed_reverted')} "
        f"| {t('in_jax_tests')} | {t('repo_tests')} "
        f"| {st.get('seconds_total', '-')}s |")
  return rows


def write_pr_description(version, pkg_files, test_files, left_out,
                         test_notes=()):
  seed_src = textwrap.dedent("""\
      x_ref = jax.new_ref(1.)

      @jax.remat
      def f(y, x_ref):
        out = y * x_ref[...]
        x_ref[...] += 1
        return out

      jax.grad(f)(1., x_ref)   # upstream: 2.0, and x_ref holds 3.0
      """)
  status = _status_rows()
  lines = [
      "# remat: effects on external refs happen once, in the forward pass",
      "",
      "## Problem",
      "",
      "A `jax.remat` / `jax.checkpoint` function that touches a ref it did not "
      "create (`jax.new_ref`, passed in or closed over) is not transparent "
      "under differentiation:",
      "",
      "```python",
      seed_src.rstrip(),
      "```",
      "",
      f"Without `jax.remat` the same program gives grad {SEED_GRAD} and "
      f"leaves {SEED_REF} in the ref. Partial evaluation keeps the "
      "`get`/`swap`/`addupdate` equations on known refs in both the forward "
      "and the rematerializing jaxpr, so the backward pass repeats the "
      "writes and its recomputed reads see the mutated state.",
      "",
      "## Semantics",
      "",
      "Invariant: remat is transparent. Outputs, gradients and final ref "
      "contents equal those of the same program without `jax.remat`.",
      "",
      _semantics_text().rstrip(),
      "",
      "## Change",
      "",
      "New `jax/_src/remat_refs/` (rules for `remat_p`; pure remat bodies "
      "are handed to the existing rules unchanged, so their jaxprs do not "
      "change):",
      "",
      *_module_summaries(pkg_files),
      "",
      "- `jax/_src/ad_checkpoint.py`: `_install_ref_aware_remat_rules()` at "
      "the end, next to remat's other rules.",
      "- `jax/__init__.py`: calls it last, once every module the rules "
      "import is loaded (importing them from ad_checkpoint.py itself would "
      "be circular).",
      f"- `tests/`: {len([n for n in test_files if n.endswith('_test.py')])} "
      f"test file(s), {_count_tests(test_files)} test method(s), each "
      "checking against the same program without remat or hand-computed "
      "values.",
      "",
      "The code was developed as an out-of-tree package (`jax_remat_refs`) "
      "and is carried over with only its imports rewritten; it installs its "
      "rules into the tables `ad_checkpoint.py` fills (`remat_p.bind`, "
      "`pe.custom_partial_eval_rules`, `pe.partial_eval_jaxpr_custom_rules`, "
      "`ad.fancy_transposes`), replaces the `debug_callback` partial-eval "
      "rule with one that passes a callback's saved-by-name operands to the "
      "rematerialization (a `KeyError` today, also without refs), and on "
      "0.10.2 also `remat_p`'s DCE rule and the `swap` transpose (fixes 0.12 "
      "already has). `_compat.py` keeps the shims for the JAX versions it "
      "supports. Folding the rules into `ad_checkpoint.py` proper, fixing "
      "the `debug_callback` rule at its source, and exposing `ref_effects=` "
      "on `jax.checkpoint` are follow-ups.",
  ]
  if left_out:
    lines += ["", "Left out of the patch (demo/integration only): " +
              ", ".join(f"`{PKG}.{m}`" for m in left_out) + "."]
  if test_notes:
    lines += ["", "Tests as carried over (from the out-of-tree repo's tests/):",
              ""] + [f"- {n}" for n in test_notes]
  lines += [
      "",
      "## Validation",
      "",
      "`make patch` in the jax-remat-refs repo builds one patch per installed "
      "JAX, applies it to a copy of that version's pristine wheel, runs the "
      "seed program and the tests against the patched copy with the "
      "out-of-tree package blocked from import, then reverts the patch and "
      "shows upstream's answer again.",
      "",
  ]
  if status:
    lines += [
        "| JAX | patch | self-check | seed, patched (grad / ref) "
        "| seed, reverted | tests in JAX | repo tests on patched JAX "
        "| total |",
        "|---|---|---|---|---|---|---|---|",
        *status,
    ]
  else:
    lines.append(f"Not run for jax {version} (PATCH_SELFCHECK=0).")
  lines += ["", "## Benchmarks", "", benchmark_section().rstrip(), ""]
  (OUT / "PR_DESCRIPTION.md").write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------

def main() -> int:
  t_start = time.perf_counter()
  version, jax_dir, record = installed_jax()
  log(f"jax {version} at {jax_dir} (python {sys.version.split()[0]})")
  problems = pristine_problems(jax_dir.parent, record)
  if problems:
    raise BuildError(f"the installed jax {version} is not pristine "
                     f"({len(problems)} difference(s), e.g. {problems[0]}); "
                     "reinstall it: `pip install --force-reinstall --no-deps "
                     f"jax=={version}`")
  log(f"  pristine: {len(record)} files match the wheel RECORD")

  year = datetime.date.today().year
  pkg_files, pkg_notes, left_out = build_package(year)
  test_files, test_names, test_notes = build_tests(year, left_out)
  hooks = build_hooks(jax_dir)
  changes = {rel: (None, text) for rel, text in pkg_files.items()}
  changes.update({rel: (None, text) for rel, text in test_files.items()})
  changes.update(hooks)
  for rel in changes:
    exists = (jax_dir.parent / rel).exists()
    if exists != (changes[rel][0] is not None):
      raise BuildError(f"{rel}: {'already in' if exists else 'missing from'} "
                       f"jax {version}")
  patch_text = unified_patch(changes)

  OUT.mkdir(parents=True, exist_ok=True)
  patch_path = OUT / f"jax-remat-refs-{version}.patch"
  patch_path.write_text(patch_text, encoding="utf-8")
  shutil.rmtree(OUT / "tests", ignore_errors=True)
  for rel, text in test_files.items():
    (OUT / rel).parent.mkdir(parents=True, exist_ok=True)
    (OUT / rel).write_text(text, encoding="utf-8")
  log(f"  wrote {patch_path.relative_to(REPO)}: {len(pkg_files)} module(s) "
      f"in {IN_JAX_DIR}/, {len(hooks)} JAX file(s) edited, "
      f"{len(test_files)} test file(s); left out: "
      f"{', '.join(left_out) or 'nothing'}")
  for note in pkg_notes + test_notes:
    log(f"  note: {note}")

  status = dict(jax_version=version, python=sys.version.split()[0],
                patch=patch_path.name, patch_sha256=_b64_sha256(
                    patch_text.encode("utf-8")),
                built=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"))
  status_path = OUT / f"selfcheck-{version}.json"
  if os.environ.get("PATCH_SELFCHECK", "1") == "0":
    status.update(result="not run (PATCH_SELFCHECK=0)")
    status_path.write_text(json.dumps(status, indent=1))
    write_pr_description(version, pkg_files, test_files, left_out,
                         test_notes)
    return 0
  log("self-check:")
  status["result"] = "interrupted"
  try:
    status.update(self_check(jax_dir, record, patch_path, changes, test_names,
                             version))
    status["result"] = "pass"
  except BuildError as e:
    status["result"] = f"FAIL: {str(e).splitlines()[0]}"
    raise
  finally:
    status["seconds_total"] = round(time.perf_counter() - t_start, 1)
    after = pristine_problems(jax_dir.parent, record)
    if after:  # nothing here writes to it; say so if something else did
      status["result"] = f"FAIL: installed jax changed: {after[0]}"
    status_path.write_text(json.dumps(status, indent=1))
    write_pr_description(version, pkg_files, test_files, left_out,
                         test_notes)
  log(f"ok: jax {version}, {status['seconds_total']}s; see "
      f"{(OUT / 'PR_DESCRIPTION.md').relative_to(REPO)}")
  return 0 if not after else 1


if __name__ == "__main__":
  # SIGTERM (e.g. a killed `make`) unwinds like Ctrl-C: the test processes
  # this started are stopped and the temporary tree removed.
  def _on_term(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a 2nd one: let cleanup end
    sys.exit(143)
  signal.signal(signal.SIGTERM, _on_term)
  try:
    sys.exit(main())
  except BuildError as e:
    print(f"make_patch: error: {e}", file=sys.stderr)
    sys.exit(1)
