"""Weights & Biases: an optional mirror of what a run logs to TensorBoard.

With `config.wandb.project` set, a run also logs to W&B: the config once,
then every epoch each numeric metric under its TensorBoard tag (`test_acc`,
`seed_<k>/test_acc` with several seeds), step = epoch, and the method's
pictures (label mapping, prompt, prompted examples). The PyTorch version
logged the same quantities (to project `Reprogram-Sparse`) under its own
names: `Train/Train-Loss`, `Train/Train-ACC`, `LR`, `Test/Test-ACC`,
`Test/ECE` (its ECE is not one, see the README) and `Sparsity`; ours are
`train_loss`, `train_acc`, `lr`, `test_acc`, `test_ece` and the config's
`remaining_percent`.

The W&B run's id is kept in `workdir/wandb_run.json`: a run resumed from
its checkpoint continues the same W&B run; a run started afresh starts a
new one. Epochs a crash made the resumed run compute again are logged at
steps W&B already has, and W&B keeps the first values (the same numbers:
a resumed run repeats exactly what the interrupted one computed).

wandb is the `wandb` extra (`pip install -e '.[wandb]'`) and is imported
only by a run that asks for it. Its local files go to `workdir/wandb/`
(or `$WANDB_DIR`); `config.wandb.mode` unset follows `$WANDB_MODE`.
"""

import json
import os
import secrets
import string
from collections.abc import Mapping

from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout

MODES = ("online", "offline")


class WandbError(errors.UserError, RuntimeError):
  """W&B was asked for but cannot run; the message is one line."""


def enabled(config) -> bool:
  """True when `config.wandb.project` is set (unset or '' is off)."""
  return bool(config.wandb.project)


def _import_wandb():
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WandbError(
        "config.wandb.project is set but wandb is not installed; run pip "
        "install -e '.[wandb]', or leave --config.wandb.project "
        "unset") from None
  return wandb


def check(config) -> None:
  """Raises `WandbError` (one line) if `config` asks for W&B and it cannot
  run: a bad mode, or wandb not installed. Cheap when W&B is off."""
  if not enabled(config):
    return
  if config.wandb.mode is not None and config.wandb.mode not in MODES:
    raise WandbError(f"config: wandb.mode {config.wandb.mode!r} is not one "
                     f"of {', '.join(MODES)} (or unset: $WANDB_MODE)")
  _import_wandb()


def _new_id() -> str:
  # W&B run ids are short strings of lower-case letters and digits.
  alphabet = string.ascii_lowercase + string.digits
  return "".join(secrets.choice(alphabet) for _ in range(8))


def _run_id(workdir: str, resume: bool) -> str:
  """The id kept in the workdir when resuming, else a new one, stored."""
  path = os.path.join(workdir, layout.WANDB_FILE)
  if resume and os.path.exists(path):
    with open(path) as f:
      return json.load(f)["id"]
  run_id = _new_id()
  # Atomic: a kill at any instant leaves the old id or the new one.
  fileio.write_json(path, {"id": run_id})
  return run_id


class Run:
  """One W&B run, as `metric_writer.MetricWriter`'s mirror.

  Args:
    run: the `wandb.Run`.
    wandb: the wandb module.
  """

  def __init__(self, run, wandb):
    self.run = run
    self._wandb = wandb

  def scalars(self, values: Mapping[str, float], step: int):
    """Logs `{tag: number}` at `step` (the epoch)."""
    self.run.log(dict(values), step=int(step))

  def image(self, tag: str, path_png: str, step: int):
    """Logs a PNG file as an image at `step`."""
    self.run.log({tag: self._wandb.Image(path_png)}, step=int(step))

  def close(self):
    """Finishes the run (in offline mode: writes its local files)."""
    self.run.finish()


def start(config, workdir: str, resume: bool,
          extra: Mapping[str, object] | None = None) -> Run | None:
  """Starts the W&B run of `config` in `workdir`, or continues it.

  Args:
    config: the run's config; `config.wandb` says where to log.
    workdir: the run's directory (holds `wandb_run.json` and `wandb/`).
    resume: the run resumes from a checkpoint: continue the W&B run whose
      id the workdir keeps (a new one if it keeps none).
    extra: more values for the W&B config (e.g. resolved seeds).

  Returns:
    The `Run`, or None when `config.wandb.project` is unset.

  Raises:
    WandbError: wandb missing, a bad mode, or W&B refused (not logged in,
      unreachable), in one line.
  """
  if not enabled(config):
    return None
  check(config)
  wandb = _import_wandb()
  settings = config.wandb
  try:
    run = wandb.init(
        project=settings.project, entity=settings.entity or None,
        name=settings.name or None, group=settings.group or None,
        tags=list(settings.tags or ()) or None, mode=settings.mode or None,
        id=_run_id(workdir, resume), resume="allow",
        dir=None if os.environ.get("WANDB_DIR") else workdir,
        config={**config.to_dict(), **(extra or {})},
        # On resume the W&B config may differ in the `wandb` fields only.
        allow_val_change=True)
  except wandb.errors.Error as e:
    message = " ".join(str(e).split())
    raise WandbError(
        f"W&B could not start a run in project {settings.project!r} "
        f"({message}); run `wandb login` or set WANDB_API_KEY, or pass "
        f"--config.wandb.mode=offline (then `wandb sync`)") from None
  return Run(run, wandb)
