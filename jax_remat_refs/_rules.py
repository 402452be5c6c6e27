"""Ref-aware rules for `remat_p`, registered in JAX's rule tables.

* `remat_partial_eval` (`pe.custom_partial_eval_rules`): the path of
  grad/vjp/linearize. Known refs that the rematerializing jaxpr reads are
  snapshotted at remat entry and passed as residuals; the staged jaxpr
  allocates private refs from the snapshots. Refs it only writes are dropped
  from it.
* `remat_partial_eval_custom` (`pe.partial_eval_jaxpr_custom_rules`): the same
  for nested remat and other `partial_eval_jaxpr_custom` callers.
* `remat_transpose` (`ad.fancy_transposes`): transposes remat equations that
  take tangent refs (`RefAccum`s), which upstream's rule cannot.
* `remat_bind`: fixes the ref-effects mode of a remat when it is traced.

Each rule hands the equation to upstream's rule when no external ref is
involved, so pure programs produce exactly the jaxprs they did before.
"""
from __future__ import annotations

from jax._src import ad_checkpoint as ac
from jax._src import ad_util
from jax._src import core
from jax._src import debugging
from jax._src import effects as effects_lib
from jax._src import linear_util as lu
from jax._src import source_info_util
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.state import primitives as state_primitives
from jax._src.tree_util import tree_flatten, tree_unflatten
from jax._src.util import merge_lists, partition_list, split_list, weakref_lru_cache

from jax_remat_refs import _compat
from jax_remat_refs import _control_flow
from jax_remat_refs import _errors
from jax_remat_refs import _read_only
from jax_remat_refs import _report
from jax_remat_refs import _rewrite
from jax_remat_refs import _semantics as sem

remat_p = ac.remat_p

# Upstream's rules, captured once at import, before anything is replaced.
UPSTREAM = dict(
    bind=remat_p.bind,
    partial_eval=pe.custom_partial_eval_rules[remat_p],
    partial_eval_custom=pe.partial_eval_jaxpr_custom_rules[remat_p],
    transpose=ad.fancy_transposes[remat_p],
    dce=pe.dce_rules[remat_p],
    swap_transpose=ad.fancy_transposes[state_primitives.swap_p],
    callback_partial_eval_custom=pe.partial_eval_jaxpr_custom_rules[
        debugging.debug_callback_p],
)


# --------------------------------------------------------------------------
# bind: fix the mode when the remat is traced

def remat_bind(*args, jaxpr, prevent_cse, differentiated, policy):
  args, jaxpr, prevent_cse = _drop_unused_ref_args(args, jaxpr, prevent_cse)
  if not _rewrite.touches_input_refs(jaxpr):
    policy = sem.unwrap_policy(policy)  # pure bodies: upstream's equation
  else:
    if not isinstance(policy, sem.RefEffectsPolicy):
      policy = sem.RefEffectsPolicy(sem.default_mode(), policy)
    if not policy.ref_labels and not differentiated:
      policy = policy.with_labels(_report.input_labels(jaxpr))
    if policy.mode == sem.FORBID:
      _errors.raise_forbidden(jaxpr)
    if policy.mode == sem.ONCE:
      _read_only.check_not_written(
          jaxpr, lambda i: _report.snapshot_label(jaxpr, i, policy))
  return UPSTREAM["bind"](*args, jaxpr=jaxpr, prevent_cse=prevent_cse,
                          differentiated=differentiated, policy=policy)


def _drop_unused_ref_args(args, jaxpr, prevent_cse):
  """Leave out ref arguments the body never uses. (A ref handed on but never
  touched would otherwise be snapshotted by an enclosing remat, and that
  read makes a `cond` around it unsplittable on jax 0.10.2.)"""
  used = _rewrite.used_vars(jaxpr)
  keep = [not (_rewrite.is_ref(v) and v not in used) for v in jaxpr.invars]
  if all(keep):
    return args, jaxpr, prevent_cse
  args = tuple(a for a, k in zip(args, keep) if k)
  if isinstance(prevent_cse, tuple):
    prevent_cse = tuple(p for p, k in zip(prevent_cse, keep) if k)
  invars = [v for v, k in zip(jaxpr.invars, keep) if k]
  return args, _rewrite._finish(jaxpr, invars, jaxpr.outvars, jaxpr.eqns), \
      prevent_cse


def _snapshots_apply(policy) -> bool:
  return sem.mode_of(policy) != sem.REPLAY


def _drop_positions(seq, drop):
  return [x for i, x in enumerate(seq) if i not in set(drop)]


# --------------------------------------------------------------------------
# partial eval on JaxprTrace (grad, vjp, linearize; scan and jit bodies)

def remat_partial_eval(trace, *tracers, jaxpr, prevent_cse, differentiated,
                       policy):
  jaxpr = _control_flow.discharge_unsupported(
      _control_flow.discharge_written_local_refs(jaxpr))
  if not _rewrite.touches_input_refs(jaxpr):
    return UPSTREAM["partial_eval"](
        trace, *tracers, jaxpr=jaxpr, prevent_cse=prevent_cse,
        differentiated=differentiated, policy=policy)
  assert not jaxpr.constvars
  known_refs = [t.is_known() and _rewrite.is_ref(v) and _snapshots_apply(policy)
                for t, v in zip(tracers, jaxpr.invars)]
  # The same ref can arrive twice (e.g. closed over by a custom rule too).
  aliases = _rewrite.ref_aliases(
      [t.pval.get_known() if k else None for t, k in zip(tracers, known_refs)])
  if aliases:
    jaxpr = _rewrite.alias_invars(jaxpr, aliases)
  in_unknowns = [not t.is_known() for t in tracers]
  saveable = sem.unwrap_policy(policy) or ac.nothing_saveable
  jaxpr_known, jaxpr_staged, out_unknowns, out_inst, num_res = \
      pe.partial_eval_jaxpr_custom(jaxpr, in_unknowns, [True] * len(tracers),
                                   False, False, saveable)

  known_refs = _keep_lost_writes(jaxpr, jaxpr_known, known_refs)

  # The rematerializing jaxpr computes only the unknown outputs.
  _, out_inst_unknown = partition_list(out_inst, out_unknowns)
  jaxpr_staged, in_used_staged = pe.dce_jaxpr(jaxpr_staged, out_inst_unknown)
  used_res, used_ins = split_list(in_used_staged, [num_res])

  # Which of its ref inputs hold the caller's (known) refs, and what it gets
  # instead of each: a snapshot, the values the forward pass read, or nothing.
  staged_tracers = [t for t, u in zip(tracers, used_ins) if u]
  staged_known_refs = [k for k, u in zip(known_refs, used_ins) if u]
  n_res = sum(used_res)
  orig_index = [i for i, u in enumerate(used_ins) if u]
  label = lambda i: _report.snapshot_label(jaxpr, orig_index[i - n_res], policy)
  candidates = tuple(n_res + i for i, k in enumerate(staged_known_refs) if k)
  # Refs declared read-only and only read stay (their reads are checked).
  checks = _rewrite.plan_read_only_checks(jaxpr_staged, candidates, label)
  candidates = tuple(i for i in candidates if i not in checks.positions)
  jaxpr_staged = _rewrite.add_read_only_checks(jaxpr_staged, checks)
  plan = _rewrite.plan_ref_inputs(jaxpr_staged, candidates)
  jaxpr_staged = _rewrite.apply_ref_plan(jaxpr_staged, plan)
  n_saved, n_checked = len(plan.saved_reads), len(checks.reads)

  # The forward pass: known outputs, saved reads, read checksums, then the
  # residuals the staged jaxpr uses. Only those last get upstream's
  # reduce_precision guard: saved reads are values taken out of refs, not
  # computed here (and 0.10.2's XLA materializes the no-op f32 rounding as a
  # copy of each).
  jaxpr_known = _rewrite.append_checksums(
      _rewrite.append_outvars(jaxpr_known, plan.saved_reads), checks.reads)
  n_known_outs = len(out_unknowns) - sum(out_unknowns)
  jaxpr_known = _rewrite.move_outvars_last(jaxpr_known, n_known_outs, num_res)
  keep_known_outs = ([True] * (n_known_outs + n_saved + n_checked) + used_res)
  jaxpr_known, in_used_known = pe.dce_jaxpr(jaxpr_known, keep_known_outs)
  jaxpr_known = ac._insert_reduce_precision(jaxpr_known, n_res)
  known_vals = [t.pval.get_known() for t in tracers if t.is_known()]
  # Snapshots are taken before the forward pass touches the refs.
  labels = {i: label(i) for i in plan.snapshot}
  snapshots = {}
  for i in plan.snapshot:
    with _report.snapshot_scope(labels[i]):
      snapshots[i] = _read_whole(staged_tracers[i - n_res].pval.get_known())
  _report.log_snapshots(list(labels.values()), n_saved)
  _, known_args = partition_list(in_used_known, known_vals)
  outs = core.eval_jaxpr(jaxpr_known, (), *known_args)
  known_outs, saved, read_checksums, residuals = split_list(
      outs, [n_known_outs, n_saved, n_checked])

  # Stage the rematerialization: saved reads, residuals, snapshots, the rest.
  res_tracers = [trace.new_instantiated_const(r) for r in [*saved, *residuals]]
  staged_in = []
  for i, t in enumerate(staged_tracers):
    pos = n_res + i
    if pos in snapshots and pos not in plan.keep_real:
      staged_in.append(trace.new_instantiated_const(snapshots[pos]))
    elif pos not in plan.drop:
      staged_in.append(trace.instantiate_const(t))
  staged_in += map(trace.new_instantiated_const, read_checksums)
  staged_in += [trace.new_instantiated_const(snapshots[pos])
                for pos in plan.keep_real]
  if isinstance(prevent_cse, tuple):
    _, cse_ins = partition_list(used_ins, prevent_cse)
    cse_ins = _drop_positions(cse_ins, [d - n_res for d in plan.drop])
    prevent_cse = ((True,) * (n_saved + n_res) + tuple(cse_ins) +
                   (True,) * (len(checks.labels) + len(plan.keep_real)))
  out_tracers = [pe.JaxprTracer(trace, pe.PartialVal.unknown(v.aval), None)
                 for v in jaxpr_staged.outvars]
  params = dict(jaxpr=jaxpr_staged, prevent_cse=prevent_cse,
                differentiated=True, policy=policy)
  staged_effects = core.positional_effects(jaxpr_staged)
  recipe = pe.new_eqn_recipe(
      trace, [*res_tracers, *staged_in], out_tracers, remat_p, params,
      staged_effects, source_info_util.current())
  for t in out_tracers:
    t.recipe = recipe
  if effects_lib.partial_eval_kept_effects.filter_in(staged_effects):
    # Keep the equation even if none of its outputs is used (upstream's rule
    # loses an output-less remat's effects on refs the caller passes in).
    trace.effect_handles.append(pe.EffectHandle([*res_tracers, *staged_in],
                                                recipe))
  return merge_lists(out_unknowns, known_outs, out_tracers)


def _keep_lost_writes(jaxpr, jaxpr_known, known_refs):
  """Drop from `known_refs` the refs whose writes the forward (known) jaxpr
  lost. (JAX 0.10.2's partial evaluation of a loop nested in a loop keeps a
  write only in the staged part.) Such a ref stays real in the
  rematerialization, where its writes then happen, once."""
  written, kept = _rewrite.writes(jaxpr), _rewrite.writes(jaxpr_known)
  return [k and not (v in written and v not in kept)
          for k, v in zip(known_refs, jaxpr.invars)]


def _read_whole(ref):
  return state_primitives.ref_get(ref, ())


# --------------------------------------------------------------------------
# partial_eval_jaxpr_custom (nested remat, scan/jit custom partial eval)

def remat_partial_eval_custom(saveable, unks_in, inst_in, eqn):
  upstream = UPSTREAM["partial_eval_custom"]
  policy = eqn.params["policy"]
  local = _control_flow.discharge_unsupported(
      _control_flow.discharge_written_local_refs(eqn.params["jaxpr"]))
  if local is not eqn.params["jaxpr"]:
    eqn = eqn.replace(params=dict(eqn.params, jaxpr=local),
                      effects=core.eqn_effects(local, eqn.invars))
  known_ref_ins = [not u and _rewrite.is_ref(v)
                   for u, v in zip(unks_in, eqn.invars)]
  if not any(known_ref_ins) or not _snapshots_apply(policy):
    return upstream(saveable, unks_in, inst_in, eqn)
  jaxpr = eqn.params["jaxpr"]
  aliases = _rewrite.ref_aliases(
      [v if k else None for v, k in zip(eqn.invars, known_ref_ins)])
  if aliases:
    jaxpr = _rewrite.alias_invars(jaxpr, aliases)
  jaxpr = _control_flow.discharge_unsupported(jaxpr)
  if jaxpr is not eqn.params["jaxpr"]:
    eqn = eqn.replace(params=dict(eqn.params, jaxpr=jaxpr))
  eqn_known, eqn_staged, unks_out, inst_out, res = upstream(
      saveable, unks_in, inst_in, eqn)
  if eqn_staged is None:
    return eqn_known, eqn_staged, unks_out, inst_out, res

  num_res = len(eqn_staged.invars) - sum(inst_in)
  _, staged_known_refs = partition_list(inst_in, known_ref_ins)
  candidates = tuple(num_res + i for i, k in enumerate(staged_known_refs) if k)
  staged_jaxpr = eqn_staged.params["jaxpr"]
  label = lambda i: _report.snapshot_label(
      jaxpr, eqn.invars.index(eqn_staged.invars[i]), policy)
  checks = _rewrite.plan_read_only_checks(staged_jaxpr, candidates, label)
  candidates = tuple(i for i in candidates if i not in checks.positions)
  plan = _rewrite.plan_ref_inputs(staged_jaxpr, candidates)
  if not (plan.snapshot or plan.drop or checks.positions):
    return eqn_known, eqn_staged, unks_out, inst_out, res
  staged_jaxpr = _rewrite.add_read_only_checks(staged_jaxpr, checks)

  # The known equation also returns the snapshots (read at its entry) and the
  # values of the reads the staged equation no longer does.
  known_invars = eqn_known.invars
  known_pos = tuple(known_invars.index(eqn_staged.invars[i]) for i in plan.snapshot)
  known_jaxpr = _rewrite.append_checksums(_rewrite.append_outvars(
      _rewrite.append_entry_reads(eqn_known.params["jaxpr"], known_pos),
      plan.saved_reads), checks.reads)
  snap_vars = [core.Var(eqn_staged.invars[i].aval.inner_aval)
               for i in plan.snapshot]
  saved_vars = [core.Var(v.aval) for v in plan.saved_reads]
  ck_vars = [core.Var(_read_only.CHECKSUM_AVAL) for _ in checks.labels]
  eqn_known = eqn_known.replace(
      outvars=[*eqn_known.outvars, *snap_vars, *saved_vars, *ck_vars],
      params=dict(eqn_known.params, jaxpr=known_jaxpr),
      effects=core.eqn_effects(known_jaxpr, known_invars))

  # The staged equation takes them instead of the refs.
  new_staged = _rewrite.apply_ref_plan(staged_jaxpr, plan)
  invars = [*eqn_staged.invars, *ck_vars]
  trailing = []
  for i, v in zip(plan.snapshot, snap_vars):
    if i in plan.keep_real:
      trailing.append(v)
    else:
      invars[i] = v
  invars = [*saved_vars, *_drop_positions(invars, plan.drop), *trailing]
  staged_params = dict(eqn_staged.params, jaxpr=new_staged)
  if isinstance(staged_params["prevent_cse"], tuple):
    staged_params["prevent_cse"] = (True,) * len(saved_vars) + tuple(
        _drop_positions(staged_params["prevent_cse"], plan.drop)) + (
            (True,) * (len(ck_vars) + len(trailing)))
  eqn_staged = eqn_staged.replace(
      invars=invars, params=staged_params,
      effects=core.eqn_effects(new_staged, invars))
  return (eqn_known, eqn_staged, unks_out, inst_out,
          [*res, *snap_vars, *saved_vars, *ck_vars])


# --------------------------------------------------------------------------
# transpose with tangent refs

def remat_transpose(out_cts, *args, jaxpr, prevent_cse, differentiated,
                    policy):
  if not any(isinstance(a, ad.RefAccum) for a in args):
    return UPSTREAM["transpose"](out_cts, *args, jaxpr=jaxpr,
                                 prevent_cse=prevent_cse,
                                 differentiated=differentiated, policy=policy)
  primals_ctrefs, specs = ad.project_accums(args)
  out_zeros = tuple(type(ct) is ad_util.Zero for ct in out_cts)
  nz_cts = [ct for ct, z in zip(out_cts, out_zeros) if not z]
  flat_in = [*primals_ctrefs, *nz_cts]
  in_avals = tuple(core.typeof(x) for x in flat_in)
  t_jaxpr, consts, out_tree = _transposed_jaxpr(
      jaxpr, specs, in_avals, out_zeros)
  outs = remat_p.bind(*consts, *flat_in, jaxpr=t_jaxpr,
                      prevent_cse=prevent_cse if isinstance(prevent_cse, bool)
                      else True,
                      differentiated=True, policy=policy)
  cts_in, logs = tree_unflatten(out_tree, outs)
  cts_in = iter(cts_in)
  for a in args:
    if isinstance(a, ad.ValAccum):
      a.accum(next(cts_in))
  return _compat.transpose_rule_result(logs)


@weakref_lru_cache
def _transposed_jaxpr(jaxpr: core.Jaxpr, specs, in_avals, out_zeros):
  """A jaxpr computing a remat body's transpose, its inputs being the
  projected primals/cotangent refs followed by the nonzero cotangents."""
  n_primals = len(in_avals) - (len(out_zeros) - sum(out_zeros))
  cell = {}

  def transposed(*flat):
    primals_ctrefs, nz_cts = split_list(flat, [n_primals])
    args = ad.unproject_accums(specs, primals_ctrefs)
    linear = [isinstance(a, ad.GradAccum) for a in args]
    nz = iter(nz_cts)
    cts = [ad_util.Zero(v.aval.to_ct_aval() if hasattr(v.aval, "to_ct_aval")
                        else v.aval) if z else next(nz)
           for v, z in zip(jaxpr.outvars, out_zeros)]
    # Recompute the nonlinear part, then transpose the linear part.
    known, kconsts, lin, lconsts, out_uk, _ = _compat.partial_eval_nounits(
        jaxpr, linear, False)
    nonlin_args = [a for a, l in zip(args, linear) if not l]
    known_outs = core.eval_jaxpr(known, kconsts, *nonlin_args)
    n_known_outs = len(out_uk) - sum(out_uk)
    residuals = known_outs[n_known_outs:]
    lin_args = [*residuals, *(a for a, l in zip(args, linear) if l)]
    lin, _ = _rewrite.lift_constant_tangent_writes(lin, len(residuals))
    lin_args += [ad.ValAccum(v.aval) for v in lin.invars[len(lin_args):]]
    lin_cts = [ct for ct, uk in zip(cts, out_uk) if uk]
    logs = _compat.backward_pass(lin, lconsts, lin_args, lin_cts)
    cts_out = [a.freeze() for a in args if isinstance(a, ad.ValAccum)]
    cts_out = [ad_util.instantiate(ct) for ct in cts_out]
    flat_out, cell["tree"] = tree_flatten((cts_out, logs))
    return flat_out

  dbg = jaxpr.debug_info.with_unknown_names()
  t_jaxpr, _, consts = pe.trace_to_jaxpr_dynamic(
      lu.wrap_init(transposed, debug_info=dbg), list(in_avals))
  return pe.convert_constvars_jaxpr(t_jaxpr), consts, cell["tree"]


# --------------------------------------------------------------------------
# dce: keep a remat whose outputs are all unused but that has effects

def remat_dce(used_outputs, eqn):
  """jax 0.10.2's rule, with two fixes for remats left without outputs.

  An effectful remat with no live output and no live input is kept (0.10.2
  drops it, losing e.g. its callbacks). And a remat without outputs loses
  its dead private refs (`_drop_private_refs`) and gets `prevent_cse=False`
  (nothing it computes is used later, so there is nothing to keep apart
  from CSE)."""
  used_inputs, new_eqn = UPSTREAM["dce"](used_outputs, eqn)
  if (new_eqn is None and not any(used_outputs)
      and ac._has_effects(eqn.params["jaxpr"].effects)):
    used_inputs, new_eqn = [True] * len(eqn.invars), eqn
  if new_eqn is not None and not new_eqn.outvars:
    body = _drop_private_refs(new_eqn.params["jaxpr"])
    new_eqn = new_eqn.replace(
        params=dict(new_eqn.params, prevent_cse=False, jaxpr=body),
        effects=core.eqn_effects(body, new_eqn.invars))
  return used_inputs, new_eqn


@weakref_lru_cache
def _drop_private_refs(jaxpr: core.Jaxpr) -> core.Jaxpr:
  """An output-less body without its dead private refs (jax 0.10.2).

  Its refs made by `new_ref` (e.g. from the snapshots) are never observed, so
  their updates are discharged and removed; what stays are the effects that
  made the remat live. jaxlib 0.10.2's XLA otherwise fails on the leftovers
  of such refs under a cond ("Invalid sharding")."""
  if jaxpr.outvars or any(_rewrite.is_ref(v) for v in jaxpr.invars):
    return jaxpr
  pure = _control_flow.discharge_local_refs(jaxpr)
  if pure is jaxpr:
    return jaxpr
  pure, _ = pe.dce_jaxpr(pure, [], instantiate=True)  # keeps every input
  return pure


def swap_transpose(g, ref_acc, x, *idx, **params):
  """jax 0.10.2's swap transpose, except that a constant swapped-in value
  (not a `GradAccum`) takes no cotangent; the ref's cotangent is still
  swapped out (0.12 does the same)."""
  if ref_acc.ref is not None and not isinstance(x, ad.GradAccum):
    state_primitives.swap_p.bind(ref_acc.ref, ad_util.instantiate(g), *idx,
                                 **params)
    return
  UPSTREAM["swap_transpose"](g, ref_acc, x, *idx, **params)


def callback_partial_eval_custom(saveable, unks_in, inst_in, eqn):
  """Upstream's rule for `debug_callback` in remat partial eval, except that
  a callback replayed in the rematerialization gets its known inputs that
  are not available there as residuals. (Upstream leaves them out when the
  policy saves such an input, e.g. by name: the staged jaxpr then refers
  to a var it never receives, a KeyError, also for pure functions.)"""
  known, staged, unks_out, inst_out, res = UPSTREAM[
      "callback_partial_eval_custom"](saveable, unks_in, inst_in, eqn)
  if staged is not None:
    have = set(res)
    res = [*res, *(v for v, inst in zip(eqn.invars, inst_in)
                   if not inst and isinstance(v, core.Var) and v not in have)]
  return known, staged, unks_out, inst_out, res


# --------------------------------------------------------------------------
# (de)activation

PATCHED = dict(
    bind=remat_bind,
    partial_eval=remat_partial_eval,
    partial_eval_custom=remat_partial_eval_custom,
    transpose=remat_transpose,
    dce=UPSTREAM["dce"] if _compat.DCE_RULE_TAKES_LIVE_INS else remat_dce,
    swap_transpose=(swap_transpose if _compat.SWAP_TRANSPOSE_ASSUMES_LINEAR_VALUE
                    else UPSTREAM["swap_transpose"]),
    callback_partial_eval_custom=callback_partial_eval_custom,
)


def install(rules: dict) -> None:
  (_report.install if rules is PATCHED else _report.uninstall)()
  remat_p.bind = rules["bind"]
  pe.custom_partial_eval_rules[remat_p] = rules["partial_eval"]
  pe.partial_eval_jaxpr_custom_rules[remat_p] = rules["partial_eval_custom"]
  ad.fancy_transposes[remat_p] = rules["transpose"]
  pe.dce_rules[remat_p] = rules["dce"]
  ad.fancy_transposes[state_primitives.swap_p] = rules["swap_transpose"]
  pe.partial_eval_jaxpr_custom_rules[debugging.debug_callback_p] = rules[
      "callback_partial_eval_custom"]
