"""Randomized differential testing: `jax.remat` must be transparent for ref programs.

* `tests.fuzz.gen` builds random small JAX programs over refs as an AST that
  prints as standalone Python source (the reproducer), with a ``remat`` switch.
* `tests.fuzz.oracle` runs a program with and without remat and compares
  outputs, gradients, final ref contents and forward-pass callback counts.
* `tests.fuzz.minimize` shrinks a failing program.
* ``python -m tests.fuzz.run --n N --seed S`` is the command-line runner.
"""
