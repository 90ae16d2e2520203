"""Several processes (one per host) that act as one run.

A multi-host run (`--distributed`) has one process per host; every
collective (a sharded step, an Orbax `CheckpointManager`'s construction, a
barrier) must be entered by all of them, the same number of times. So
whatever only one process may decide — the workdir's checks, its lock,
overwrite's deletions, which epoch to resume after — is decided by process
0 (the lead, the process that writes the run's files), and its answer, or
its one-line error, is broadcast before anything collective: every process
then goes on alike, or ends with the same line. With one process every
function here is a plain call.
"""

from typing import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

from reprog_jax import errors

# The longest error line that crosses to the other processes (bytes).
_MESSAGE_BYTES = 2048
_OK, _USER_ERROR, _BUG = 0, 1, 2


def is_lead() -> bool:
  """Whether this process writes the run's files (and prints)."""
  return jax.process_index() == 0


def say(*args, **kwargs) -> None:
  """`print`, on the lead process only: one line however many hosts."""
  if is_lead():
    print(*args, **kwargs)


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
  result, error, status = None, None, _OK
  if is_lead():
    try:
      result = fn()
    except errors.UserError as e:
      error, status = e, _USER_ERROR
    except BaseException as e:  # A bug: the others must not wait for ever.
      error, status = e, _BUG
  message = "" if error is None else errors.first_line(error, _MESSAGE_BYTES)
  status, result, message = _broadcast(status, result, message)
  if error is not None:
    raise error
  if status == _USER_ERROR:
    raise errors.TrainingError(message)
  if status == _BUG:
    raise RuntimeError(f"process 0 failed ({message}); its traceback says "
                       f"why")
  return result


def _broadcast(status, result, message) -> tuple[int, int | None, str]:
  text = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = message.encode("utf-8")[:_MESSAGE_BYTES]
  text[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  head = np.asarray([status, result is not None,
                     0 if result is None else result], np.int32)
  head, text = multihost_utils.broadcast_one_to_all((head, text))
  head, text = np.asarray(head), np.asarray(text)
  message = bytes(text).rstrip(b"\0").decode("utf-8", errors="replace")
  return int(head[0]), int(head[2]) if head[1] else None, message


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
