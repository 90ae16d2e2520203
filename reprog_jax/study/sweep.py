"""Sweeps: a study's grid of runs, one sub-workdir per cell, resumable.

  python -m reprog_jax.sweep --config=configs/study.py:smoke --workdir=runs/study
  python -m reprog_jax.report runs/study

A study (`configs/study.py`) names networks, methods, datasets, n_shots and
seeds, and optionally the label mappings and prompts to vary (ILM-VP's
`label_mappings`, `prompts`); a cell is one network x method (variant) x
dataset x n_shot, and all seeds of a cell train in one run
(`config.seeds`) in `<workdir>/<cell name>/`, e.g. `vp/dense/cifar10/2-shot`
or, for a variant other than the method's default, `vp-blmpp/dense/...`.
Re-running skips finished cells (their `summary.json` exists) and resumes
an interrupted one from its last epoch. A cell that fails gets an
`error.txt` (its traceback) and the sweep goes on; the command then exits
with status 1.

On a cluster, a job array shares the cells: task i of n runs the cells
whose index in the study's order is i modulo n (`--task_index`,
`--num_tasks`, by default from SLURM_ARRAY_TASK_ID / _MIN / _STEP / _COUNT),
all writing to one workdir on a shared filesystem. The grid is recorded in
`<workdir>/study.json`: a later sweep with another grid is refused, or with
`--extend`, when it only adds cells, runs the new ones.
Beside the grid, study.json records what each cell runs (`runs`) and the
study's declared analysis (primary analysis, alpha, similar_source_pp,
power_effect), from which the report decides and states its verdicts.

The grid itself (the cells and their checked configs) is built by
`study.grid`; this module runs its cells and keeps the sweep directory.
"""

import json
import os
import time
import traceback

from reprog_jax import cli
from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax import methods
from reprog_jax.study import grid as grid_lib
from reprog_jax.train import run_lock
from reprog_jax.train import loop as train
from reprog_jax.train import workdir as workdir_lib

PROG = "reprog_jax.sweep"


# --------------------------------------------------------------------------
# The sweep directory
# --------------------------------------------------------------------------


def record_study(workdir, study, grid, extend=False) -> None:
  """Records `study` in `workdir/study.json`, or checks it against the one
  recorded there.

  A grid with the same cells and cell configs (up to fields that do not
  change results) is accepted; one that only adds cells needs `extend`;
  any other is refused.
  """
  path = os.path.join(workdir, layout.STUDY_FILE)
  study = grid_lib.plain_study(study)
  recorded = None
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
    old = {c.name: workdir_lib.comparable(c.config)
           for c in grid_lib.cells(recorded["study"])}
    new = {c.name: workdir_lib.comparable(c.config) for c in grid}
    changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
    removed = sorted(old.keys() - new.keys())
    added = sorted(new.keys() - old.keys())
    if changed or removed:
      what = (f"changes cell {changed[0]} (in "
              f"{', '.join(_differences(old[changed[0]], new[changed[0]]))})"
              if changed else
              f"drops {len(removed)} of its cells (e.g. {removed[0]})")
      raise grid_lib.SweepError(
          f"{workdir} holds a sweep of another grid: this study {what}; use "
          f"another --workdir, or the study recorded in {path}")
    if added and not extend:
      raise grid_lib.SweepError(
          f"{workdir} holds a sweep of another grid: this study adds "
          f"{len(added)} cell(s) (e.g. {added[0]}); pass --extend to run "
          f"them too, or use another --workdir")
  record = {"study": study, "cells": [c.name for c in grid],
            # What each cell runs, for the report's planned grid.
            "runs": grid_lib.planned_runs(grid),
            # Where each method is defined: a re-run imports a plug-in
            # from here.
            "method_modules": {m: methods.get(m).module
                               for m in study["methods"]}}
  if recorded == record:
    return
  fileio.write_json(path, record)


def import_recorded_methods(workdir) -> None:
  """Imports the methods `workdir/study.json` records the modules of
  (`methods.find`), so that re-running a sweep of a plug-in method needs
  no REPROG_JAX_METHODS; one that cannot be imported is left for the
  grid's one-line error."""
  try:
    with open(os.path.join(workdir, layout.STUDY_FILE)) as f:
      recorded = json.load(f)
  except (OSError, ValueError):
    return  # No sweep yet, or one `record_study` will refuse.
  if not isinstance(recorded, dict) or not isinstance(
      recorded.get("method_modules"), dict):
    return
  for name, module in recorded["method_modules"].items():
    methods.find(name, module)


def _differences(old, new) -> list[str]:
  return sorted(k for k in old.keys() | new.keys()
                if old.get(k) != new.get(k))[:5]


def task_from_environment(environ=None) -> tuple[int | None, int | None]:
  """(task index from 0, number of tasks) of a SLURM job array, or
  (None, None) outside one.

  SLURM numbers tasks as given to --array (often from 1, possibly with a
  step: --array=1-9:2); the index is their rank, (ID - MIN) / STEP.
  """
  environ = os.environ if environ is None else environ
  if "SLURM_ARRAY_TASK_ID" not in environ:
    return None, None
  try:
    task_id = int(environ["SLURM_ARRAY_TASK_ID"])
    first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
    step = int(environ.get("SLURM_ARRAY_TASK_STEP", 1))
    count = int(environ.get("SLURM_ARRAY_TASK_COUNT", 1))
  except ValueError:
    raise grid_lib.SweepError(
        "SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT are not integers; pass "
        "--task_index and --num_tasks") from None
  return (task_id - first) // max(step, 1), count


def task_cells(grid, task_index, num_tasks) -> list[grid_lib.Cell]:
  """Task `task_index`'s share of `grid`: every `num_tasks`-th cell."""
  if num_tasks < 1 or not 0 <= task_index < num_tasks:
    raise grid_lib.SweepError(
        f"task index {task_index} is not in [0, {num_tasks}) (--num_tasks="
        f"{num_tasks}); pass --task_index from 0 to {num_tasks - 1} (under a "
        f"SLURM job array, leave both flags unset)")
  return [c for i, c in enumerate(grid) if i % num_tasks == task_index]


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


def run(study, workdir, task_index=0, num_tasks=1, extend=False) -> dict:
  """Runs this task's cells of `study` under `workdir`.

  Args:
    study: a study (`configs/study.py`), ConfigDict or dict.
    workdir: the sweep directory (shared by every task).
    task_index: this task, in [0, num_tasks).
    num_tasks: how many tasks share the cells.
    extend: accept a study that adds cells to the one recorded in workdir.

  Returns:
    {cell name: {'status': 'done'|'skipped'|'busy'|'failed', 'seconds': float,
    'message': str, 'workdir': str}} for this task's cells, in order.

  Raises:
    grid_lib.SweepError: a bad study or task index, or a workdir of another
      grid; nothing has run then. A failing cell raises nothing: it is recorded.
  """
  import_recorded_methods(workdir)
  grid = grid_lib.cells(study)
  mine = task_cells(grid, task_index, num_tasks)
  workdir_lib.check(workdir)
  os.makedirs(workdir, exist_ok=True)
  record_study(workdir, study, grid, extend)
  share = (f"task {task_index} of {num_tasks}: " if num_tasks > 1 else "")
  print(f"sweep: {share}{len(mine)} of {len(grid)} cells in {workdir}",
        flush=True)
  outcomes = {}
  for k, cell in enumerate(mine, 1):
    outcomes[cell.name] = run_cell(cell, workdir, f"[{k}/{len(mine)}]")
  counts = {s: sum(o["status"] == s for o in outcomes.values())
            for s in ("done", "skipped", "busy", "failed")}
  busy = (f"{counts['busy']} run by another task now, " if counts["busy"]
          else "")
  print(f"sweep: {counts['done']} done, {counts['skipped']} finished before, "
        f"{busy}{counts['failed']} failed; report: python -m reprog_jax.report "
        f"{workdir}", flush=True)
  return outcomes


def run_cell(cell, workdir, prefix="") -> dict:
  """Runs (or resumes, or skips when finished) one cell; never raises for a
  failing run: its traceback goes to the cell's error.txt."""
  cell_dir = os.path.join(workdir, cell.workdir_rel)
  outcome = {"workdir": cell_dir, "seconds": 0.0, "message": ""}
  head = f"{prefix} {cell.name} ..."
  if os.path.exists(os.path.join(cell_dir, layout.SUMMARY_FILE)):
    print(f"{head} finished before, skipped", flush=True)
    return {**outcome, "status": "skipped", "message": "finished before"}
  os.makedirs(cell_dir, exist_ok=True)
  config = cell.config
  spec = methods.get(config.method)
  fileio.write_json(os.path.join(cell_dir, layout.CELL_FILE), {
      "name": cell.name, "network": cell.network, "kind": config.network,
      "method": config.method, "method_module": spec.module,
      "variant": spec.variant(config),
      "dataset": config.data.name,
      "n_shot": config.n_shot, "seeds": list(config.seeds)})
  started = time.time()
  try:
    summary = train.train_and_evaluate(config, cell_dir)
  except run_lock.WorkdirBusyError as e:
    # Another task runs this cell now: nothing failed, and its workdir is
    # not ours to write in.
    print(f"{head} busy: {e}", flush=True)
    return {**outcome, "status": "busy", "message": str(e)}
  # Deliberately broad: whatever stops one cell (a bad input, running out
  # of memory, a bug) is recorded with its traceback, and the others run.
  except Exception as e:  # pylint: disable=broad-except
    seconds = time.time() - started
    fileio.write_text(os.path.join(cell_dir, layout.ERROR_FILE),
                      traceback.format_exc())
    message = _one_line(e)
    print(f"{head} FAILED after {seconds:.0f} s: {message} (traceback in "
          f"{os.path.join(cell_dir, layout.ERROR_FILE)})", flush=True)
    return {**outcome, "status": "failed", "seconds": seconds,
            "message": message}
  seconds = time.time() - started
  if os.path.exists(os.path.join(cell_dir, layout.ERROR_FILE)):
    os.remove(os.path.join(cell_dir, layout.ERROR_FILE))  # An earlier try's.
  best = summary["seeds_mean_std"]["best"] if summary else None
  # std: ddof=1 over the seeds, None with a single seed.
  message = (f"best acc {best['test_acc']['mean']:.2%} +- "
             f"{best['test_acc']['std'] or 0:.2%}, ece "
             f"{best['test_ece']['mean']:.4f} +- "
             f"{best['test_ece']['std'] or 0:.4f} (std, ddof=1)"
             if best else "no summary from this process")
  print(f"{head} done in {seconds:.0f} s, {message}", flush=True)
  return {**outcome, "status": "done", "seconds": seconds, "message": message}


def _one_line(error) -> str:
  """A failed cell in one line: a user error's message, a bug's type too."""
  text = errors.first_line(error, limit=1000)
  if isinstance(error, errors.UserError) or text == type(error).__name__:
    return text
  return f"{type(error).__name__}: {text}"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _define_flags():
  # Defined only when run as a program, so that importing this module next
  # to `reprog_jax.main` (which has flags of the same names) is harmless.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file(
      "config", None, "A study and preset, e.g. configs/study.py:smoke or "
      "study:smoke.",
      lock_config=True)
  workdir = flags.DEFINE_string(
      "workdir", None, "The sweep directory: one sub-directory per cell; "
      "re-running skips finished cells and resumes the others.")
  extend = flags.DEFINE_bool(
      "extend", False, "Accept a study that adds cells to the one recorded "
      "in --workdir (study.json), and run the new cells.")
  task_index = flags.DEFINE_integer(
      "task_index", None, "This task of a job array, from 0 (default: from "
      "SLURM_ARRAY_TASK_ID, else 0).")
  num_tasks = flags.DEFINE_integer(
      "num_tasks", None, "How many tasks share the cells (default: "
      "SLURM_ARRAY_TASK_COUNT, else 1).")
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir, extend, task_index, num_tasks


def main(flag_values) -> int:
  """Runs the sweep the flags describe; returns the exit status."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  config, workdir, extend, task_index, num_tasks = flag_values
  logging.set_verbosity(logging.ERROR)

  try:
    study = config.value
    study.networks  # A config file that failed to load raises on first use.
  except OSError as e:
    return cli.fail(PROG, cli.one_line(e, "study"))

  def sweep():
    index, count = task_index.value, num_tasks.value
    if index is None or count is None:
      env_index, env_count = task_from_environment()
      index = _first_set(index, env_index, 0)
      count = _first_set(count, env_count, 1)
    outcomes = run(study, workdir.value, index, count, extend.value)
    failed = [name for name, o in outcomes.items()
              if o["status"] == "failed"]
    if failed:
      raise grid_lib.SweepError(
          f"{len(failed)} of {len(outcomes)} cells failed ("
          f"{', '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}); "
          f"each one's traceback is in its error.txt; fix and re-run the "
          f"same command (finished cells are skipped)")

  return cli.run(
      PROG, sweep, interrupted="interrupted; finished cells are kept and the "
      "interrupted one resumes from its last epoch: run the same command "
      "again")


def _first_set(*values):
  return next(v for v in values if v is not None)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(lambda argv: main(_FLAGS), flags_parser=cli.parser(
      PROG, "study", "--config.seeds='(0, 1)'"))
