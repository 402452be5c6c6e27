"""`make fork JAX=<release>`: a jax wheel of the release with the series.

    python build/fork.py build --jax 0.12.0.1     # -> build/out/fork/*.whl
    python build/fork.py build --jax main --repo JAX_GIT_DIR
    python build/fork.py check                    # in the fork's venv
    python build/fork.py fuzz --gen 1 --n 100 --seed 0

`build` takes the release's own source (its sdist from the registry), applies
build/series/jax-<release>/ in order (build/make_patch.py), gives it the
local version <release>+remat.refs and builds a wheel with pip. With --jax
main: the newest commit of the JAX repository with build/series/main/, as
<next release>.dev<commit date>+remat.refs (it runs with the newest jaxlib).

`check` (for `make test FORK=1`) asserts that the jax imported is such a
fork and that importing jax_remat_refs installs nothing into it.

`suite` runs the test suite (pytest arguments may follow) and sorts its
failures: a test of what only the overlay has (its modes, its activation
switch, its jaxpr forms and warning class; build/fork_expected.txt, each
pattern with its reason) is an expected failure on a fork; any other failure
fails the command.

`fuzz` runs tests/fuzz/run.py with the overlay not imported: the name
`jax_remat_refs` is bound to an empty module, so the programs' `import
jax_remat_refs` loads nothing of the package.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import types

REPO = pathlib.Path(__file__).resolve().parent.parent
LOCAL = "remat.refs"


def build(version: str, python: str, jax_repo: str | None) -> pathlib.Path:
  sys.path.insert(0, str(REPO / "build"))
  import make_patch
  target = "main" if version == "main" else f"jax-{version}"
  if not make_patch.patches(target):
    raise SystemExit(f"no series for {target} in build/series/")
  out = make_patch.OUT / "fork"
  repo = pathlib.Path(jax_repo) if jax_repo else make_patch.DEFAULT_JAX_REPO
  meta = make_patch.build(target, repo, make_patch.OUT / "patches")
  if not all(p["applies"] for p in meta["series"]):
    raise SystemExit(f"{target}: the series does not apply")
  src = out / f"src-{version}"
  if src.exists():
    shutil.rmtree(src)
  shutil.copytree(make_patch.OUT / "patches" / target / "tree", src,
                  ignore=shutil.ignore_patterns(".git"))
  vfile = src / "jax" / "version.py"
  text = vfile.read_text()
  if version == "main":
    # main's own form of a dev version: <next release>.dev<commit date>.
    commit = meta["source"].rsplit("@", 1)[1]
    date = make_patch.git(f"--git-dir={repo}", "log", "-1", "--format=%cd",
                          "--date=format:%Y%m%d", commit).stdout.strip()
    version = re.search(r'^_version = "(.+)"$', text, re.M)[1] + f".dev{date}"
  text, n = re.subn(r"^_release_version: str(?: \| None)? = .*$",
                    f"_release_version: str = '{version}+{LOCAL}'",
                    text, flags=re.M)
  if n != 1:
    raise SystemExit(f"{vfile}: no _release_version line")
  vfile.write_text(text)
  for old in out.glob(f"jax-{version}+{LOCAL}-*.whl"):
    old.unlink()
  subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                  str(out), str(src)], check=True)
  wheel, = out.glob(f"jax-{version}+{LOCAL}-*.whl")
  print(f"{wheel.relative_to(REPO)}: jax {version} with "
        f"{len(meta['series'])} patches ("
        + ", ".join(p["patch"] for p in meta["series"]) + ")")
  return wheel


def check() -> None:
  import jax
  from jax._src import ad_checkpoint
  if not jax.__version__.endswith(f"+{LOCAL}"):
    raise SystemExit(f"jax {jax.__version__} is not a fork ({jax.__file__})")
  assert hasattr(ad_checkpoint, "_remat_bind_value_form")
  import jax_remat_refs
  from jax_remat_refs import _install
  if _install.installed():
    raise SystemExit("jax_remat_refs installed its rules into a forked jax")
  print(f"jax {jax.__version__}: the fork; jax_remat_refs "
        f"{jax_remat_refs.__version__} imported, nothing installed")


def expected_failures() -> list[tuple[str, str]]:
  """(fnmatch pattern of a test id, reason) from build/fork_expected.txt."""
  out, reason = [], ""
  for line in (REPO / "build" / "fork_expected.txt").read_text().splitlines():
    if line.startswith("## "):
      reason = line[3:].strip()
    elif line.strip() and not line.startswith("#"):
      out.append((line.strip(), reason))
  return out


def suite(argv) -> int:
  import collections
  import fnmatch
  check()
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p",
                      "no:cacheprovider", *(argv or ["tests"])], cwd=REPO,
                     text=True, capture_output=True)
  out = r.stdout + r.stderr
  failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)))
  patterns = expected_failures()
  by_reason, unexpected = collections.Counter(), []
  for test in failed:
    reason = next((why for pat, why in patterns
                   if fnmatch.fnmatchcase(test, pat)), None)
    if reason is None:
      unexpected.append(test)
    else:
      by_reason[reason] += 1
  summary = [line for line in out.splitlines()
             if re.search(r"\d+ (passed|failed)", line)]
  print(summary[-1] if summary else out[-2000:])
  for reason, n in by_reason.most_common():
    print(f"expected on a fork ({n}): {reason}")
  for test in unexpected:
    print(f"UNEXPECTED: {test}")
  n_expected = len(failed) - len(unexpected)
  print(f"suite on the fork: {len(failed)} failed, {n_expected} of them "
        f"expected, {len(unexpected)} unexpected")
  return 1 if unexpected or (r.returncode not in (0, 1)) else 0


def fuzz(argv) -> int:
  sys.modules["jax_remat_refs"] = types.ModuleType("jax_remat_refs")
  import jax
  if not jax.__version__.endswith(f"+{LOCAL}"):
    raise SystemExit(f"jax {jax.__version__} is not a fork")
  sys.path.insert(0, str(REPO))
  from tests.fuzz import run
  rc = run.main(argv)
  assert not hasattr(sys.modules["jax_remat_refs"], "activate")
  return rc


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["fuzz"]:
    return fuzz(argv[1:])
  if argv[:1] == ["suite"]:
    return suite(argv[1:])
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("command", choices=("build", "check"))
  ap.add_argument("--jax", help="the release, or main (build)")
  ap.add_argument("--repo", help="a git repository of JAX (build --jax main; "
                  "default build/out/jax.git)")
  ap.add_argument("--python", default=sys.executable,
                  help="the interpreter whose pip builds the wheel")
  ns = ap.parse_args(argv)
  if ns.command == "build":
    build(ns.jax, ns.python, ns.repo)
  else:
    check()
  return 0


if __name__ == "__main__":
  sys.exit(main())
