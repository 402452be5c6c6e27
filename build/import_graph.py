"""The package's import graph: `python build/import_graph.py [PKG_DIR]`.

Prints each module with its lines and the package modules it imports, the
level of each (ground floor 0: imports nothing of ours; otherwise one above
the highest module it imports), the number of arrows, and any cycle.
"""
from __future__ import annotations

import ast
import pathlib
import sys


def graph(pkg: pathlib.Path):
  name = pkg.name
  mods = {p.stem: p for p in sorted(pkg.glob("*.py"))}
  edges = {}
  for mod, path in mods.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module == name:
          deps.update(a.name for a in node.names if a.name in mods)
        elif node.module.startswith(name + "."):
          deps.add(node.module.split(".")[1])
      elif isinstance(node, ast.Import):
        deps.update(a.name.split(".")[1] for a in node.names
                    if a.name.startswith(name + "."))
    deps.discard(mod)
    edges[mod] = deps
  return mods, edges


def levels(edges):
  level, visiting = {}, set()
  def visit(m):
    if m in level:
      return level[m]
    if m in visiting:
      raise ValueError(f"cycle through {m}")
    visiting.add(m)
    level[m] = 1 + max((visit(d) for d in edges[m]), default=-1)
    visiting.discard(m)
    return level[m]
  for m in edges:
    visit(m)
  return level


def main(argv):
  pkg = pathlib.Path(argv[1] if len(argv) > 1 else "jax_remat_refs")
  mods, edges = graph(pkg)
  level = levels(edges)
  lines = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
  for m in sorted(mods, key=lambda m: (level[m], m)):
    print(f"L{level[m]} {m:<14} {lines[m]:>5} lines  <- "
          f"{', '.join(sorted(edges[m])) or '-'}")
  print(f"modules {len(mods)}, lines {sum(lines.values())}, levels "
        f"{max(level.values()) + 1}, arrows {sum(map(len, edges.values()))}, "
        "cycles 0")


if __name__ == "__main__":
  main(sys.argv)
