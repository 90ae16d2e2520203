"""A run's workdir: where it may go, and which config its checkpoints hold.

`check` refuses a workdir that can never be written before anything slow
happens; `prepare` creates it or checks that the run it holds has the same
config (`config.json`, written atomically), refusing another one, or a
checkpoint an earlier version wrote in another format, unless
`config.overwrite`.
"""

import json
import os
import shlex
import shutil

import jax.numpy as jnp

from reprog_jax import layout
from reprog_jax import fileio
from reprog_jax import methods
from reprog_jax.train import checkpoints
from reprog_jax.train import run_config
from reprog_jax.errors import TrainingError

# Fields that may differ between a run and its resumption: they change how
# fast or where from, not what is computed.
NOT_COMPARED = ("overwrite", "progress", "plot_interval", "compile_cache",
                "data.worker_count",
                "data.read_threads", "data.prefetch_batches", "data.data_dir",
                "data.folder_root", "data.store_on_device",
                # Where the run is mirrored to, not what it computes.
                "wandb.project", "wandb.entity", "wandb.name", "wandb.group",
                "wandb.tags", "wandb.mode")
# Fields a config.json of an older version holds under another name: read
# as the new one, so those runs still resume. Until n_shot was one field,
# `data.n_shot` held the same value as `n_shot`.
RENAMED = {"data.n_shot": "n_shot"}
# Fields a config.json of an older version lacks, at the value that version
# ran with: those runs resume (before `test_every`, every epoch tested).
ADDED = {"test_every": 1}


def flatten(d, prefix=""):
  """Yields `('a.b.c', value)` for every leaf of a nested dict."""
  for k, v in d.items():
    if isinstance(v, dict):
      yield from flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def comparable(config, dtype=None) -> dict:
  """The flat fields of `config` that a resumed run must share, with the
  compute `dtype` 'auto' resolved to (when given)."""
  flat = dict(flatten(run_config.to_dict(config)))
  if dtype is not None:
    # 'auto' resolves per backend; a bfloat16 run resumed in float32 would
    # not end as it would have.
    flat["resolved_dtype"] = jnp.dtype(dtype).name
  return {k: v for k, v in flat.items() if k not in NOT_COMPARED}


def check(workdir) -> None:
  """Raises `TrainingError` unless `workdir` is, or can become, a directory
  this process can write; writes nothing, and costs nothing, so that a typo
  is reported before the network loads and the steps compile."""
  existing = os.path.abspath(workdir)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = ("is not a directory" if existing == os.path.abspath(workdir)
             else f"is inside {existing}, which is not a directory")
    raise TrainingError(f"--workdir {workdir} {where}; pass a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise TrainingError(
        f"--workdir {workdir}: {existing} is not writable by this user; pass "
        f"a directory you can write to")


def _mismatch(path, current) -> tuple[str | None, str | None]:
  """Why the run whose config `path` records cannot resume as `current`
  (None if it can), and the flags that would resume it (None if no flags
  can: a field the run records and no flag sets back, e.g. None)."""
  if not os.path.exists(path):
    return f"checkpoints but no {layout.CONFIG_FILE}", None
  with open(path) as f:
    previous = json.load(f)
  previous = {**ADDED, **{RENAMED.get(k, k): v for k, v in previous.items()
                          if k not in NOT_COMPARED}}
  # Fields the method does not use in this config, or that an older
  # version left implicit, as the method reads them (its parts decide).
  spec = methods.find(current.get("method"))
  as_read = spec.comparable if spec is not None else dict

  def differing(recorded, given):
    recorded, given = as_read(recorded), as_read(given)
    return sorted(k for k in recorded.keys() | given.keys()
                  if recorded.get(k) != given.get(k))

  diff = differing(previous, current)
  if not diff:
    return None, None
  # The recorded values a flag can set back; a hint only if they suffice.
  recorded = as_read(previous)
  flags = {k: _flag(k, recorded[k]) for k in diff
           if k in recorded and k in current}
  flags = {k: flag for k, flag in flags.items() if flag is not None}
  resumes = flags and not differing(
      previous, {**current, **{k: recorded[k] for k in flags}})
  return (f"another config (differs in {', '.join(diff[:5])})",
          " ".join(flags.values()) if resumes else None)


def _flag(key, value) -> str | None:
  """`--config.KEY=VALUE` (shell-quoted) setting `key` back to the
  recorded `value`; None where no flag can (the resolved dtype, None, a
  tuple of anything but numbers)."""
  def literal(v):
    if isinstance(v, (int, float)):  # bool too
      return repr(v)
    if isinstance(v, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
      return "(" + ",".join(map(repr, v)) + ("," if len(v) == 1 else "") + ")"
    return None
  if key == "resolved_dtype" or value is None:
    return None
  text = value if isinstance(value, str) else literal(value)
  return None if text is None else shlex.quote(f"--config.{key}={text}")


def prepare(config, workdir, dtype) -> None:
  """Creates `workdir`, or checks that its checkpointed run has this config.

  Call it only once every input has been checked: it is the first thing
  that writes. A workdir without a checkpoint has nothing to lose and is
  simply reused; one holding a run of another config, or of a config it
  does not record, is refused, or with `config.overwrite` emptied.
  """
  path = os.path.join(workdir, layout.CONFIG_FILE)
  current = comparable(config, dtype)
  if checkpoints.latest_epoch(workdir) is not None:
    problem, resume = checkpoints.outdated(workdir), None
    if not problem:
      problem, resume = _mismatch(path, current)
    if problem:
      if not config.overwrite:
        hint = f"to resume it, pass {resume}; " if resume else ""
        raise TrainingError(
            f"{workdir} holds a run with {problem}; {hint}use another "
            f"--workdir, or pass --config.overwrite=True to delete that run "
            f"and start over")
      print(f"overwrite: deleting the run in {workdir} (it has {problem})")
      for name in os.listdir(workdir):
        if name == layout.LOCK_FILE:
          continue  # This run's own lock: removed, it would lock nothing.
        target = os.path.join(workdir, name)
        (shutil.rmtree if os.path.isdir(target) else os.remove)(target)
  os.makedirs(os.path.join(workdir, layout.PLOTS_DIR), exist_ok=True)
  fileio.write_json(path, current)
