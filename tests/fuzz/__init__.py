"""Randomized differential testing: `jax.remat` must be transparent for ref programs.

* `tests.fuzz.gen` builds random small JAX programs over refs as an AST that
  prints as standalone Python source (the reproducer), with a ``remat`` switch.
* `tests.fuzz.oracle` runs a program with and without remat and compares
  outputs, gradients, final ref contents and forward-pass callback counts.
* `tests.fuzz.gen2` is a second generator of a different shape: one state
  vector through a tree of blocks (remat, jit, fori, scan over refs, switch,
  vmap), each program run under value_and_grad / vjp with a ref write before
  the backward pass / linearize / jvp / hessian.
* `tests.fuzz.known_shapes`: hand-written programs of the shapes the two
  generators were widened for.
* `tests.fuzz.ref_api` lists JAX's ref API and maps each entry to the
  generator feature exercising it (or a reason to leave it out).
* `tests.fuzz.minimize` shrinks a failing program.
* `tests/fuzz/frozen/`: programs of earlier generator versions that once
  failed, kept as source.
* ``python -m tests.fuzz.run --n N --seed S`` is the command-line runner.
"""
