"""Entry point: `python -m reprog_jax.main --config=configs/ilm_vp.py:cifar10
--workdir=DIR [--config.n_shot=10 ...]`.

Only parses flags and calls `train.train_and_evaluate`; every bad input (an
`errors.UserError`) ends with one line on stderr and exit status 1. Any other
exception is a bug and keeps its traceback.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from reprog_jax import errors
from reprog_jax import cli as flag_errors
from reprog_jax.train import loop as train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file and preset, e.g. configs/ilm_vp.py:cifar10.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics, plots and the summary go; "
    "re-running on the same workdir resumes.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_epoch", None, "Stop once this epoch is checkpointed "
    "(to split a long run into jobs); re-running resumes.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Several hosts, one process each: call "
    "jax.distributed.initialize() first (SLURM, Open MPI, Kubernetes and "
    "Cloud TPU are detected; elsewhere give the three flags below).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: host:port of process "
    "0.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: how many processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv  # parse_flags refused any positional argument.
  # Library chatter (missing TPU runtimes, tfds variants) is not for users.
  logging.set_verbosity(logging.ERROR)
  cluster = {"coordinator_address": _COORDINATOR.value,
             "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
  if not _DISTRIBUTED.value and any(v is not None for v in cluster.values()):
    print("reprog_jax.main: error: --coordinator_address, --num_processes "
          "and --process_id need --distributed", file=sys.stderr)
    return 1
  if _DISTRIBUTED.value:
    # Before anything touches a device: every process then sees the
    # devices of all hosts, and the run spreads over all of them.
    import jax  # pylint: disable=g-import-not-at-top
    try:
      jax.distributed.initialize(**cluster)
    except (ValueError, RuntimeError) as e:
      print(f"reprog_jax.main: error: --distributed: cannot reach the other "
            f"processes ({flag_errors.one_line(e)}); launch under SLURM, "
            f"Open MPI, Kubernetes or on Cloud TPU, or pass "
            f"--coordinator_address, --num_processes and --process_id",
            file=sys.stderr)
      return 1
  try:
    config = _CONFIG.value
    config.method  # A config file that failed to load raises on first use.
  except OSError as e:
    print(f"reprog_jax.main: error: {flag_errors.one_line(e)}",
          file=sys.stderr)
    return 1
  try:
    train.train_and_evaluate(config, _WORKDIR.value,
                             stop_after_epoch=_STOP_AFTER.value)
  except errors.UserError as e:
    print(f"reprog_jax.main: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted; the last completed epoch is checkpointed: run the "
          "same command to resume", file=sys.stderr)
    return 130
  return 0


# absl's parsing, with every bad flag or override as one line, exit 1.
parse_flags = flag_errors.parser("reprog_jax.main", "config",
                                 "--config.n_shot=10")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
