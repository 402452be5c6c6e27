"""`make patch`: the hand-written series against JAX, applied and counted.

    python build/make_patch.py [--targets main,jax-0.12.0.1,...] [--repo DIR]

The series are written by hand, as JAX code, and kept in build/series/:

  build/series/main/            against JAX's main branch (the newest commit
                                of --repo): each patch edits JAX's files and
                                adds its tests to JAX's own test files;
  build/series/jax-<release>/   the same change for a release's source (its
                                sdist from the package registry), adapted
                                where the release's code differs; jax/ only
                                (the sdist has no tests).

Each directory holds NNNN-<name>.patch files, applied in order with
`git apply`, and the PR text of each (PR-NNNN-<name>.md). For each target
this script exports the pristine source into build/out/patches/<target>/
pristine, applies the series to a copy (.../tree), and writes
.../series.json: per patch, its lines added and removed under jax/ and
tests/ and whether it applied. Nothing here generates JAX code.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
SERIES = REPO / "build" / "series"
OUT = REPO / "build" / "out"
# A clone of github.com/jax-ml/jax (`make jax-repo` makes a bare one here).
DEFAULT_JAX_REPO = pathlib.Path(os.environ.get("JAX_REPO", OUT / "jax.git"))
# What JAX's tests and its wheel need from its tree, besides jax/ (a mirror
# may lack the blobs of large files elsewhere).
EXPORTED = ("jax", "tests", "conftest.py", "pyproject.toml", "setup.py",
            "README.md", "LICENSE")


def targets() -> list[str]:
  return sorted((p.name for p in SERIES.iterdir() if p.is_dir()),
                key=lambda t: (t != "main", t))


def patches(target: str) -> list[pathlib.Path]:
  return sorted((SERIES / target).glob("[0-9][0-9][0-9][0-9]-*.patch"))


def git(*args, cwd=None, check=True):
  return subprocess.run(["git", *args], cwd=cwd, check=check, text=True,
                        capture_output=True)


def _init(dest: pathlib.Path, message: str) -> None:
  git("init", "-q", cwd=dest)
  git("add", "-A", cwd=dest)
  git("-c", "user.name=make_patch", "-c", "user.email=make_patch@localhost",
      "commit", "-qm", message, cwd=dest)


def release_sdist(version: str, python: str = sys.executable) -> pathlib.Path:
  """The release's sdist, downloaded once into build/out/sdist."""
  dist = OUT / "sdist"
  found = dist / f"jax-{version}.tar.gz"
  if not found.exists():
    dist.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps",
                    "--no-binary", ":all:", f"jax=={version}", "-d",
                    str(dist)], check=True)
  return found


def export(target: str, dest: pathlib.Path, jax_repo: pathlib.Path,
           ref: str = "HEAD") -> str:
  """The pristine source of `target` in `dest`, as a one-commit git
  repository; returns what it is (a commit, or the sdist's name)."""
  if dest.exists():
    shutil.rmtree(dest)
  dest.mkdir(parents=True)
  if target == "main":
    commit = git(f"--git-dir={jax_repo}", "rev-parse", ref).stdout.strip()
    archive = subprocess.run(
        ["git", f"--git-dir={jax_repo}", "archive", commit, "--", *EXPORTED],
        check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    what = f"jax-ml/jax@{commit}"
  else:
    sdist = release_sdist(target.removeprefix("jax-"))
    subprocess.run(["tar", "-xzf", str(sdist), "-C", str(dest),
                    "--strip-components=1"], check=True)
    what = sdist.name
  _init(dest, what)
  return what


def count_lines(patch: str) -> dict:
  """Lines added and removed under jax/ and under tests/."""
  counts = dict(jax_added=0, jax_removed=0, tests_added=0, tests_removed=0)
  where = None
  for line in patch.splitlines():
    if line.startswith("diff --git"):
      where = "tests" if " b/tests/" in line else "jax"
    elif line.startswith("+") and not line.startswith("+++"):
      counts[f"{where}_added"] += 1
    elif line.startswith("-") and not line.startswith("---"):
      counts[f"{where}_removed"] += 1
  return counts


def added_tests(patch: str) -> dict[str, list[str]]:
  """The test methods a patch adds, by test file."""
  out: dict[str, list[str]] = {}
  path = None
  for line in patch.splitlines():
    if line.startswith("+++ b/"):
      path = line[6:]
    elif path and path.startswith("tests/"):
      m = re.match(r"\+  def (test_\w+)\(", line)
      if m:
        out.setdefault(path, []).append(m.group(1))
  return out


def apply(tree: pathlib.Path, patch: pathlib.Path, *extra) -> str | None:
  """`git apply` of `patch` in `tree`; the error, or None."""
  r = git("apply", "--check", *extra, str(patch), cwd=tree, check=False)
  if r.returncode:
    return r.stderr.strip()
  git("apply", *extra, str(patch), cwd=tree)
  return None


def build(target: str, jax_repo: pathlib.Path, out: pathlib.Path) -> dict:
  """Exports `target`, applies its series in order; writes series.json."""
  dest = out / target
  dest.mkdir(parents=True, exist_ok=True)
  for old in [*dest.glob("*.patch"), *dest.glob("PR-*.md")]:
    old.unlink()  # a renamed or dropped patch of an earlier run
  source = export(target, dest / "pristine", jax_repo)
  tree = dest / "tree"
  if tree.exists():
    shutil.rmtree(tree)
  shutil.copytree(dest / "pristine", tree, symlinks=True)
  series = []
  for p in patches(target):
    text = p.read_text()
    error = apply(tree, p)
    series.append(dict(patch=p.name, applies=error is None, error=error,
                       tests=added_tests(text), **count_lines(text)))
    shutil.copy(p, dest / p.name)
    pr = p.with_name("PR-" + p.name.removesuffix(".patch") + ".md")
    if pr.exists():
      shutil.copy(pr, dest / pr.name)
    if error:
      break
  meta = dict(target=target, source=source, series=series)
  (dest / "series.json").write_text(json.dumps(meta, indent=1) + "\n")
  return meta


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--targets", default=",".join(targets()))
  ap.add_argument("--repo", default=str(DEFAULT_JAX_REPO),
                  help="a git repository of JAX (for the target main)")
  ap.add_argument("--out", default=str(OUT / "patches"))
  ns = ap.parse_args(argv)
  jax_repo = pathlib.Path(ns.repo)
  if not (jax_repo / "HEAD").exists() and (jax_repo / ".git").exists():
    jax_repo = jax_repo / ".git"
  bad = False
  for target in ns.targets.split(","):
    if target == "main" and not (jax_repo / "HEAD").exists():
      raise SystemExit(f"no JAX repository at {jax_repo}: pass --repo (make "
                       "patch JAX_REPO=...) or run `make jax-repo`")
    meta = build(target, jax_repo, pathlib.Path(ns.out))
    print(f"{target} ({meta['source']}):")
    for p in meta["series"]:
      print(f"  {p['patch']}: jax/ +{p['jax_added']}/-{p['jax_removed']}, "
            f"tests/ +{p['tests_added']}/-{p['tests_removed']}, "
            + ("applies" if p["applies"] else f"DOES NOT APPLY: {p['error']}"))
      bad |= not p["applies"]
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
