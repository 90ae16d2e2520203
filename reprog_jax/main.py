"""Entry point: `python -m reprog_jax.main --config=configs/ilm_vp.py:cifar10
--workdir=DIR [--config.n_shot=10 ...]`; `--config=ilm_vp:cifar10` names
the same preset by its module in `reprog_jax.configs` (an installed wheel's).

Only parses flags and calls `train.train_and_evaluate`; every bad input (an
`errors.UserError`) ends with one line on stderr and exit status 1. Any other
exception is a bug and keeps its traceback.
"""


from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from reprog_jax import cli as flag_errors
from reprog_jax import errors
from reprog_jax.train import loop as train
from reprog_jax.train import processes

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file and preset, e.g. "
    "configs/ilm_vp.py:cifar10, or a preset by name, e.g. ilm_vp:cifar10.",
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


PROG = "reprog_jax.main"


def main(argv):
  del argv  # parse_flags refused any positional argument.
  # Library chatter (missing TPU runtimes, tfds variants) is not for users.
  logging.set_verbosity(logging.ERROR)
  cluster = {"coordinator_address": _COORDINATOR.value,
             "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
  if not _DISTRIBUTED.value and any(v is not None for v in cluster.values()):
    return flag_errors.fail(PROG, "--coordinator_address, --num_processes "
                            "and --process_id need --distributed")
  if _DISTRIBUTED.value:
    # Before anything touches a device: every process then sees the
    # devices of all hosts, and the run spreads over all of them.
    import jax  # pylint: disable=g-import-not-at-top
    # CPU devices of several processes need a collectives library (the
    # default has none: a cross-process step would fail); gloo is built
    # in. It changes nothing on GPUs or TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      jax.distributed.initialize(**cluster)
    except (ValueError, RuntimeError) as e:
      return flag_errors.fail(
          PROG, f"--distributed: cannot reach the other processes "
          f"({flag_errors.one_line(e)}); launch under SLURM, Open MPI, "
          f"Kubernetes or on Cloud TPU, or pass --coordinator_address, "
          f"--num_processes and --process_id")

  def load_config():
    try:
      config = _CONFIG.value
      config.method  # A config file that failed to load raises on first use.
    except OSError as e:
      raise errors.ConfigError(flag_errors.one_line(e)) from None
    return config

  def train_and_evaluate():
    # With several processes a config file missing on one host ends every
    # process at once, in one line (`processes.each_checks`).
    config = processes.each_checks(load_config)
    train.train_and_evaluate(config, _WORKDIR.value,
                             stop_after_epoch=_STOP_AFTER.value)

  return flag_errors.run(
      PROG, train_and_evaluate, interrupted="interrupted; the last "
      "completed epoch is checkpointed: run the same command to resume")


# absl's parsing, with every bad flag or override as one line, exit 1.
parse_flags = flag_errors.parser(PROG, "config",
                                 "--config.n_shot=10")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
