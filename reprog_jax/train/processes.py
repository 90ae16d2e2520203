"""Several processes (one per host) that act as one run.

A multi-host run (`--distributed`) has one process per host; every
collective (a sharded step, an Orbax `CheckpointManager`'s construction, a
barrier) must be entered by all of them, the same number of times. A
process that fails alone strands the others in their next collective, and
at exit in JAX's shutdown barrier (5 minutes, then an abort). So:

- every process checks its OWN inputs (its data, its network directory,
  its access to the workdir) before the first collective, in
  `each_checks`, and the processes then agree: if any failed, every one
  fails at once with the same line, naming the process(es) that failed;
- whatever only one process may decide — the workdir's lock, overwrite's
  deletions, which epoch to resume after — is decided by process 0 (the
  lead, the process that writes the run's files) in `lead_decides`, and
  its answer, or its one-line error, reaches every process;
- what only the lead does once the run has begun (its metrics, figures
  and summary) runs in `lead_only`, so its failure (a full disk) reaches
  every process too.

Failing together, they also reach JAX's shutdown barrier together, and
exit at once. The reports travel through the coordination service's
key-value store (`jax.distributed`'s client), not through a device
collective (`multihost_utils.process_allgather`): the store needs no
compiled program and no collectives library (gloo connects at the first
device collective), carries a line of any length, and a wait on it is
bounded and can be interrupted, where a device collective that a failed
process never enters waits until the runtime gives up on it. With one
process every function here is a plain call.
"""

import itertools
import json
import time
from typing import Callable, TypeVar

import jax
from jax._src import distributed  # The coordination service's client.
from jax.experimental import multihost_utils
import numpy as np

from reprog_jax import errors

T = TypeVar("T")

# The longest error line one process reports (characters).
_MESSAGE_CHARS = 2048
_OK, _USER_ERROR, _BUG = "ok", "user error", "bug"
# How long a process waits for another's report: that one may still be
# opening a large data root on a network filesystem, or hashing a network.
_WAIT_SECONDS = 3600
# Each wait is cut into slices this long: a blocking call into the
# coordination service holds Ctrl-C off until it returns.
_SLICE_MS = 1000
# The most distinct errors one line spells out; the rest are counted.
_MOST_ERRORS = 3
_KEY_PREFIX = "reprog_jax/report"
# The number of this process's next report: every process makes the same
# reports in the same order (they run the same code), so the n-th of each
# are answers to the same question, under keys of their own.
_report_numbers = itertools.count()


def is_lead() -> bool:
  """Whether this process writes the run's files (and prints)."""
  return jax.process_index() == 0


def say(*args, **kwargs) -> None:
  """`print`, on the lead process only: one line however many hosts."""
  if is_lead():
    print(*args, **kwargs)


def each_checks(fn: Callable[[], T]) -> T:
  """Runs `fn` on every process, then agrees: if it failed on any process,
  it fails on every one, at once, with the same line.

  Every process must call it at the same point, and `fn` must enter no
  collective (a process that failed before it would never come). Call it
  before anything that can fail on one process alone: it first brings up
  this process's devices, which waits for every other process's.

  Args:
    fn: checks this process's own inputs (and may load them): returns what
      the caller needs, or raises a `errors.UserError` (one line).

  Returns:
    What `fn` returned on this process.

  Raises:
    errors.TrainingError: on every process, when `fn` raised a
      `errors.UserError` on any: one line naming each process that failed
      (its index) and its error, e.g. 'process 1 of 2: cifar10: /data/x:
      no such directory'.
    RuntimeError: on the other processes when `fn` had a bug on one (which
      raises its own exception, traceback and all).
  """
  if jax.process_count() == 1:
    return fn()
  result, error, report = _attempt(fn)
  number = next(_report_numbers)
  _post(number, report)
  reports = [report if p == jax.process_index() else _read(number, p)
             for p in range(jax.process_count())]
  if report["status"] == _BUG:
    raise error
  bugs = [p for p, r in enumerate(reports) if r["status"] == _BUG]
  if bugs:
    raise RuntimeError(
        f"{_processes(bugs[:1])} failed ({reports[bugs[0]]['message']}); "
        f"its traceback says why")
  if any(r["status"] == _USER_ERROR for r in reports):
    raise errors.TrainingError(_failures_line(reports)) from error
  return result


def lead_decides(fn: Callable[[], int | None]) -> int | None:
  """Runs `fn` on the lead process only; every process returns its result.

  Args:
    fn: the decision: returns an int or None, or raises a
      `errors.UserError` (one line).

  Raises:
    errors.UserError: the lead's error, on the lead as raised, on the other
      processes as a `errors.TrainingError` with the same line.
  """
  if jax.process_count() == 1:
    return fn()
  number = next(_report_numbers)
  if is_lead():
    result, error, report = _attempt(fn)
    _post(number, dict(report, result=result))
    if error is not None:
      raise error
    return result
  report = _read(number, 0)
  if report["status"] == _USER_ERROR:
    raise errors.TrainingError(report["message"])
  if report["status"] == _BUG:
    raise RuntimeError(f"process 0 failed ({report['message']}); its "
                       f"traceback says why")
  return report["result"]


def lead_only(fn: Callable[[], T]) -> T | None:
  """Runs `fn` (the lead's own work: the run's files) on the lead process
  only, and every process learns whether it failed.

  Returns:
    What `fn` returned, on the lead; None on the other processes.

  Raises:
    What `lead_decides` raises: `fn`'s error on the lead, and on the other
    processes its line (`errors.TrainingError`) or a `RuntimeError` naming
    the lead's bug.
  """
  if jax.process_count() == 1:
    return fn()
  returned = {}

  def run() -> None:  # On the lead alone; its result stays here.
    returned["result"] = fn()

  lead_decides(run)
  return returned.get("result")


def _attempt(fn):
  """(result, exception, report) of calling `fn`: the report says how it
  ended, in a form the other processes can read."""
  try:
    return fn(), None, {"status": _OK}
  except errors.UserError as e:
    return None, e, {"status": _USER_ERROR,
                     "message": errors.first_line(e, _MESSAGE_CHARS)}
  except BaseException as e:  # A bug: the others must not wait for ever.
    return None, e, {"status": _BUG, "message": f"{type(e).__name__}: "
                     f"{errors.first_line(e, _MESSAGE_CHARS)}"}


def _client():
  client = distributed.global_state.client
  if client is None:  # Several processes that JAX started on its own.
    raise errors.TrainingError(
        f"{jax.process_count()} processes without jax.distributed: call "
        f"jax.distributed.initialize() first (reprog_jax.main "
        f"--distributed does)")
  return client


def _key(number, process) -> str:
  return f"{_KEY_PREFIX}/{number}/{process}"


def _post(number, report) -> None:
  """Publishes this process's `number`-th report."""
  _client().key_value_set(_key(number, jax.process_index()),
                          json.dumps(report))


def _read(number, process) -> dict:
  """`process`'s `number`-th report, once it has made it.

  Raises:
    errors.TrainingError: none came within `_WAIT_SECONDS`.
  """
  deadline = time.monotonic() + _WAIT_SECONDS
  while True:
    try:
      return json.loads(_client().blocking_key_value_get(
          _key(number, process), _SLICE_MS))
    except jax.errors.JaxRuntimeError as e:
      if "DEADLINE_EXCEEDED" not in str(e):
        raise  # Not a slow process: the service itself failed.
    if time.monotonic() > deadline:
      raise errors.TrainingError(
          f"{_processes([process])} sent no answer within {_WAIT_SECONDS} "
          f"s; see its own output (is it still reading its data?)")


def _processes(indices) -> str:
  """'process 1 of 4', 'processes 0, 1 of 2', 'processes 0-2, 5 of 8':
  `indices` (sorted), three or more in a row as a range."""
  runs = []
  for index in indices:
    if runs and index == runs[-1][-1] + 1:
      runs[-1].append(index)
    else:
      runs.append([index])
  text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else
                   ", ".join(map(str, r)) for r in runs)
  return (f"process{'es' if len(indices) > 1 else ''} {text} of "
          f"{jax.process_count()}")


def _failures_line(reports) -> str:
  """One line of the failed processes' errors: the processes with the same
  error together, the first `_MOST_ERRORS` errors spelled out."""
  by_message = {}
  for process, report in enumerate(reports):
    if report["status"] == _USER_ERROR:
      by_message.setdefault(report["message"], []).append(process)
  groups = list(by_message.items())
  parts = [f"{_processes(indices)}: {message}"
           for message, indices in groups[:_MOST_ERRORS]]
  if len(groups) > _MOST_ERRORS:
    rest = sorted(p for _, indices in groups[_MOST_ERRORS:] for p in indices)
    parts.append(f"{len(groups) - _MOST_ERRORS} more errors on "
                 f"{_processes(rest)} (fix these and run again to see them)")
  return "; ".join(parts)


def barrier(name: str) -> None:
  """Waits until every process got here (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def share(n: int) -> slice:
  """This process's contiguous share of `n` rows (`np.array_split`'s)."""
  count, index = jax.process_count(), jax.process_index()
  base, extra = divmod(n, count)
  start = index * base + min(index, extra)
  return slice(start, start + base + (index < extra))


def gather_shares(local: np.ndarray, n: int) -> np.ndarray:
  """Every process's `share(n)` of rows, concatenated in process order: the
  `n` rows, on every process."""
  count = jax.process_count()
  if count == 1:
    return local
  longest = -(-n // count)
  padded = np.zeros((longest,) + local.shape[1:], local.dtype)
  padded[:len(local)] = local
  stacked = np.asarray(multihost_utils.process_allgather(padded))
  base, extra = divmod(n, count)
  return np.concatenate([stacked[p, :base + (p < extra)]
                         for p in range(count)])
