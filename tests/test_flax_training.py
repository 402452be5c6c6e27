"""Training a Flax NNX model with ref-backed state under remat.

A small model of blocks nnx.Linear -> nnx.BatchNorm (momentum 0.5) -> tanh ->
nnx.Dropout, each block with a custom call counter (a Variable subclass it
increments on every call), and a model-level step counter. It is trained for
a few steps with an optax optimizer (nnx.Optimizer, adam) inside nnx.jit.
The BatchNorm running statistics, the Dropout RNG counters and keys and both
counters are ref-backed: the model is built under
`nnx.var_defaults(ref=True)`, so every Variable holds a `jax.Ref`, and then
its Params are turned back into plain arrays (below, why).

Variants, each run against the same program without remat (same init, same
data), comparing the loss of every step and, initially and after every step,
every Variable of model and optimizer (params, running statistics, RNG
counters and keys, call and step counters, adam moments and step), at
rtol = atol = 1e-5:

1. `jax.remat` around each block's call, the block passed as an argument or
   (Flax 0.12.12 only) closed over;
2. `jax_remat_refs.flax.remat` (the nnx.remat drop-in) per block;
3. stacked layers (created with nnx.split_rngs + nnx.vmap) run by
   `nnx.scan(..., graph_updates=False)`, with `jax.remat` or the shim around
   the block inside the scanned body.

Flax details this file works with, none of them related to remat (each also
applies to the no-remat program):

* Params are not ref-backed: JAX's grad cannot differentiate w.r.t. a Ref
  ("grad cannot differentiate with respect to a Ref-typed argument" on JAX
  0.12; a cotangent type error on JAX 0.10).
* The gradient is `jax.value_and_grad` over the Params split off with
  nnx.split, not `nnx.value_and_grad`: in graph mode with graph updates (the
  default) nnx.grad drops writes to ref-backed Variables (running statistics
  and counters stay at their initial values, docs/flax-nnx-remat-report.md),
  and `graph_updates=False` fails on ref-backed Variables ('ValAccum' object
  has no attribute 'ref' on 0.12.8, the Ref-typed argument error on 0.12.12).
* The same holds for nnx.scan: with graph updates the scanned body's writes
  to ref-backed Variables are dropped, so the scan uses graph_updates=False.
* The Rngs used to build the model is created outside var_defaults(ref=True):
  nnx.split_rngs cannot write the split keys back into a ref-backed Rngs
  ("Invalid shape for `swap`").
* Flax 0.12.8's BatchNorm applies stop_gradient to its ref-backed statistics
  only if the Variables belong to the current trace; the loss function
  rebuilds the module's Python objects under the grad trace (same refs).

Test-side choices: the Linear before each BatchNorm has no bias (BatchNorm
cancels it, so its gradient is rounding noise that adam would turn into
lr-sized steps depending on the order of floating-point operations), and
optax's update runs with standard dtype promotion (JaxTestCase makes it
strict, which optax's adam does not satisfy).

Without Flax or optax the whole file is skipped.
"""
import unittest

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax._src import test_util as jtu
import numpy as np

import jax_remat_refs

try:
  import flax
  from flax import nnx
  import optax
  import jax_remat_refs.flax as jrf
except ImportError as _err:  # Flax and optax are optional
  flax = None
  _SKIP_REASON = f"flax or optax is not installed ({_err})"
else:
  _SKIP_REASON = ""

requires_flax = unittest.skipIf(flax is None, _SKIP_REASON)
# The models below take their refs from `nnx.with_vars` (not in Flax 0.12.6,
# the newest Flax for JAX 0.8.1 - 0.9.x).
requires_with_vars = unittest.skipIf(
    flax is not None and not hasattr(nnx, "with_vars"),
    "this Flax has no nnx.with_vars")


def _flax_version():
  return tuple(int(p) for p in flax.__version__.split(".")[:3] if p.isdigit())


TOL = dict(atol=1e-5, rtol=1e-5)
N_STEPS = 3
N_LAYERS = 2  # blocks in each model
WIDTH = 8
_data_rng = np.random.RandomState(0)
XS = _data_rng.randn(N_STEPS, 16, 3).astype(np.float32)
YS = _data_rng.randn(N_STEPS, 16, 1).astype(np.float32)

if flax is not None:

  class CallCount(nnx.Variable):
    """How often a block ran (written inside the rematerialized call)."""

  class StepCount(nnx.Variable):
    """Training steps taken (written outside any remat)."""

  class Block(nnx.Module):

    def __init__(self, din, dout, rngs):
      # No bias before BatchNorm: the batch mean cancels it, so its gradient
      # is pure rounding noise, which adam blows up to steps of size lr; the
      # result would depend on the order of floating-point operations.
      self.linear = nnx.Linear(din, dout, use_bias=False, rngs=rngs)
      self.bn = nnx.BatchNorm(dout, momentum=0.5, rngs=rngs)
      self.drop = nnx.Dropout(0.25, rngs=rngs)
      self.calls = CallCount(jnp.zeros((), jnp.int32))

    def __call__(self, x):
      self.calls[...] += 1
      return self.drop(jnp.tanh(self.bn(self.linear(x))))

  class MLP(nnx.Module):
    """Blocks in an nnx.List, called one after the other."""

    def __init__(self, rngs):
      self.inp = nnx.Linear(3, WIDTH, rngs=rngs)
      self.blocks = nnx.List(
          [Block(WIDTH, WIDTH, rngs) for _ in range(N_LAYERS)])
      self.head = nnx.Linear(WIDTH, 1, rngs=rngs)
      self.steps = StepCount(jnp.zeros((), jnp.int32))

  class ScanMLP(nnx.Module):
    """The same blocks stacked along a leading axis, for nnx.scan."""

    def __init__(self, rngs):
      self.inp = nnx.Linear(3, WIDTH, rngs=rngs)

      @nnx.split_rngs(splits=N_LAYERS)
      @nnx.vmap(in_axes=0, out_axes=0)
      def stacked(rngs):
        return Block(WIDTH, WIDTH, rngs)
      self.layers = stacked(rngs)
      self.head = nnx.Linear(WIDTH, 1, rngs=rngs)
      self.steps = StepCount(jnp.zeros((), jnp.int32))


def make_model(cls):
  """`cls` with every Variable but the Params holding a jax.Ref."""
  rngs = nnx.Rngs(0)  # a plain Rngs: nnx.split_rngs writes into it
  with nnx.var_defaults(ref=True):
    model = cls(rngs)
  return nnx.with_vars(model, ref=False, only=nnx.Param)


def _retrace(module):
  # New Python objects for the module under the current trace, same refs
  # (Flax 0.12.8's BatchNorm needs it; see the module docstring).
  return jax.tree.map(lambda leaf: leaf, module)


# How a block is called; all take (block, x). call_block, without remat,
# gives the oracle.
def call_block(block, x):
  return block(x)


def jax_remat_arg(block, x):
  return jax.remat(call_block)(block, x)


def jax_remat_closure(block, x):
  return jax.remat(lambda x: block(x))(x)


def shim_remat(block, x):
  return jrf.remat(call_block)(block, x)


# Forward passes; all take (model, call, x).
def forward_blocks(model, call, x):
  h = jnp.tanh(model.inp(x))
  for block in model.blocks:
    h = call(block, h)
  return model.head(h)


def forward_scan(model, call, x):
  h = jnp.tanh(model.inp(x))

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, graph_updates=False)
  def body(h, block):
    return call(block, h)
  return model.head(body(h, model.layers))


def optimizer_update(optimizer, model, grads):
  # optax's adam computes `decay ** count` with an integer count, which
  # JaxTestCase's strict dtype promotion rejects; only this call runs with
  # JAX's standard promotion.
  with jax.numpy_dtype_promotion("standard"):
    optimizer.update(model, grads)


def train(cls, forward, call):
  """N_STEPS adam steps. Returns (losses, states): the loss of every step and
  the state of every Variable of the model and the optimizer (the latter's
  paths prefixed with "optimizer"), initially and after each step."""
  model = make_model(cls)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  # a fresh nnx.jit per run: no compiled program is shared between runs
  # (in particular between the patched and the upstream remat rules)
  @nnx.jit
  def train_step(model, optimizer, x, y):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
      m = _retrace(nnx.merge(graphdef, params, rest))
      return jnp.mean((forward(m, call, x) - y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    optimizer_update(optimizer, model, grads)
    model.steps[...] += 1
    return loss

  def snapshot():
    state = variable_state(model)
    state.update({"optimizer" + k: v
                  for k, v in variable_state(optimizer).items()})
    return state

  # Commit every input to one device: the optimizer's step counts and the
  # data start uncommitted, the first step's outputs are committed, and the
  # two would compile separately (double the compile time of this file).
  device = jax.devices()[0]
  nnx.update(optimizer, jax.device_put(nnx.state(optimizer), device))
  data = jax.device_put((XS, YS), device)

  losses, states = [], [snapshot()]
  for x, y in zip(*data):
    losses.append(np.asarray(train_step(model, optimizer, x, y)))
    states.append(snapshot())
  return np.array(losses), states


def variable_state(node):
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(node)):
    value = leaf[...]
    if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
    out[jax.tree_util.keystr(path)] = np.asarray(value)
  return out


def ref_backed_paths(node):
  """Paths of the Variables whose value is a jax.Ref."""
  return sorted(
      jax.tree_util.keystr(path) for path, leaf in
      jax.tree_util.tree_leaves_with_path(
          nnx.state(node), is_leaf=lambda v: isinstance(v, nnx.Variable))
      if isinstance(leaf.get_raw_value(), jax.Ref))


def entries(state, name):
  """The state entries whose path contains `name`, in path order."""
  return [v for k, v in sorted(state.items())
          if name in k and not k.startswith("optimizer")]


MODELS = {"blocks": (MLP, forward_blocks) if flax else None,
          "scan": (ScanMLP, forward_scan) if flax else None}
_ORACLES = {}


def oracle(model):
  """The no-remat run of MODELS[model] (computed once)."""
  if model not in _ORACLES:
    _ORACLES[model] = train(*MODELS[model], call_block)
  return _ORACLES[model]


VARIANTS = [
    dict(testcase_name="jax_remat_per_block", model="blocks",
         call=jax_remat_arg),
    dict(testcase_name="shim_per_block", model="blocks", call=shim_remat),
    dict(testcase_name="scan_jax_remat", model="scan", call=jax_remat_arg),
    dict(testcase_name="scan_shim", model="scan", call=shim_remat),
]


def counts(state, name):
  """The counter values at the paths containing `name`, one per block."""
  return np.concatenate([np.ravel(c) for c in entries(state, name)]).tolist()


@requires_flax
@requires_with_vars
class FlaxTrainingRematTest(jtu.JaxTestCase):

  def assertMatchesOracle(self, got, oracle):
    (losses, states), (losses0, states0) = got, oracle
    self.assertAllClose(losses, losses0, **TOL)
    self.assertLen(states, len(states0))
    for step, (state, state0) in enumerate(zip(states, states0)):
      self.assertEqual(sorted(state), sorted(state0))
      for k in state0:
        self.assertAllClose(state[k], state0[k], err_msg=f"step {step}: {k}",
                            **TOL)

  @parameterized.named_parameters(
      dict(testcase_name="blocks", model="blocks"),
      dict(testcase_name="scan", model="scan"))
  def test_model_state_is_ref_backed(self, model):
    refs = ref_backed_paths(make_model(MODELS[model][0]))
    for name in ("['bn']['mean']", "['bn']['var']",
                 "['drop']['rngs']['count']", "['calls']", "['steps']"):
      self.assertTrue(any(name in p for p in refs), (name, refs))
    # the Params are plain arrays (JAX cannot differentiate w.r.t. a Ref)
    self.assertEqual(
        [p for p in refs if any(n in p for n in ("kernel", "bias", "scale"))],
        [])

  @parameterized.named_parameters(
      dict(testcase_name="blocks", model="blocks"),
      dict(testcase_name="scan", model="scan"))
  def test_oracle_trains_and_updates_state(self, model):
    losses, states = oracle(model)
    initial, final = states[0], states[-1]
    self.assertEqual(losses.shape, (N_STEPS,))
    self.assertTrue(np.all(np.isfinite(losses)))
    self.assertFalse(np.allclose(losses, losses[0]))
    # every counter advances by exactly one per step
    for step, state in enumerate(states):
      self.assertEqual(int(state["['steps'].value"]), step)
      self.assertEqual(int(state["optimizer['step'].value"]), step)
      for name in ("['calls']", "['drop']['rngs']['count']"):
        self.assertEqual(counts(state, name), [step] * N_LAYERS, name)
    # the running statistics moved away from their initial values
    for name, init in (("['bn']['mean']", 0.), ("['bn']['var']", 1.)):
      for v in entries(final, name):
        self.assertGreater(np.abs(v - init).min(), 1e-4, name)
    for k, v in final.items():
      if "kernel" in k:  # parameters and adam moments moved
        self.assertGreater(np.abs(v - initial[k]).max(), 1e-3, k)
      if "['key']" in k:  # dropout draws fold in the counter, keep the key
        np.testing.assert_array_equal(v, initial[k], err_msg=k)

  def test_oracle_running_mean_by_hand(self):
    # the first block's running mean, step by step by hand:
    # mean' = .5 mean + .5 (batch mean of the block's linear output), with
    # the parameters before the step
    _, states = oracle("blocks")
    expected = np.zeros(WIDTH, np.float32)
    for x, before, after in zip(XS, states, states[1:]):
      h = np.tanh(x @ before["['inp']['kernel'].value"]
                  + before["['inp']['bias'].value"])
      h = h @ before["['blocks'][0]['linear']['kernel'].value"]
      expected = 0.5 * expected + 0.5 * h.mean(0)
      self.assertAllClose(after["['blocks'][0]['bn']['mean'].value"],
                          expected, **TOL)

  @parameterized.named_parameters(VARIANTS)
  def test_remat_matches_no_remat(self, model, call):
    self.assertMatchesOracle(train(*MODELS[model], call), oracle(model))

  def test_jax_remat_closed_over_block_matches_no_remat(self):
    if _flax_version() < (0, 12, 12):
      self.skipTest("Flax < 0.12.12 rejects writes to a ref-backed Variable "
                    "from a trace other than its own (TraceContextError), "
                    "with upstream JAX too")
    self.assertMatchesOracle(train(MLP, forward_blocks, jax_remat_closure),
                             oracle("blocks"))

  @parameterized.named_parameters(
      v for v in VARIANTS
      if v["testcase_name"] in ("jax_remat_per_block", "scan_shim"))
  def test_upstream_remat_differs(self, model, call):
    # What the package fixes: upstream JAX replays each block's writes in the
    # recomputation, so every block counter and dropout counter advances
    # twice per step (the recomputed dropout masks differ from the forward
    # pass's) and the run diverges from the no-remat one.
    with jax_remat_refs.upstream_behavior():
      losses, states = train(*MODELS[model], call)
    losses0, _ = oracle(model)
    for name in ("['calls']", "['drop']['rngs']['count']"):
      self.assertEqual(counts(states[-1], name), [2 * N_STEPS] * N_LAYERS,
                       name)
    self.assertAllClose(losses[0], losses0[0], **TOL)  # same forward pass
    self.assertGreater(np.abs(losses - losses0).max(), 1e-2)


if __name__ == "__main__":
  absltest.main(testLoader=jtu.JaxTestLoader())
