"""One run per workdir: a lock held for the run's whole lifetime.

Two runs on one workdir (a job launched twice, a requeue while the first
still runs) would race: both append to metrics.jsonl and write the same
checkpoints. `hold(workdir)` takes `workdir/run.lock` with `flock` (which
Linux's NFS client maps to a record lock that other hosts see), so the
operating system releases it when the holder dies, `kill -9` included: a
lock left by a dead run is simply taken over. The file records who holds it (host, pid, start
time) for the one-line refusal a second run gets. On a filesystem without
record locks the file alone is the lock: a record of a process that no
longer runs on this host is taken over; one from another host is refused,
with what to check before removing it.

Only one process of a multi-host run takes the lock (process 0); it must
tell the others whether it got it before anything collective.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator

from reprog_jax import errors
from reprog_jax import layout

# flock's answers for "not supported here" (some parallel filesystems).
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class WorkdirBusyError(errors.UserError, RuntimeError):
  """Another run holds the workdir."""


def _owner_record() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds")}


def _read_owner(fd) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  data = os.read(fd, 4096)
  try:
    owner = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return {}  # Its holder is between opening and writing it.
  return owner if isinstance(owner, dict) else {}


def _describe(owner) -> str:
  if not owner.get("pid"):
    return "another run"
  return (f"run pid {owner['pid']} on {owner.get('host', '?')} (started "
          f"{owner.get('started', '?')})")


def _write_owner(fd) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(_owner_record()).encode("utf-8"))
  os.fsync(fd)


def _alive_here(owner) -> bool:
  """Whether `owner` is a process running on this host."""
  if owner.get("host") != socket.gethostname():
    return True  # Cannot tell from here: assume it runs.
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, TypeError, ValueError):
    return True  # Another user's process, or a record we cannot read.
  return True


@contextlib.contextmanager
def hold(workdir) -> Iterator[None]:
  """Holds `workdir`'s run lock for the block.

  Raises:
    WorkdirBusyError: another live run holds it (one line: who, and what
      to do).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, layout.LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
        raise WorkdirBusyError(
            f"{workdir}: {_describe(_read_owner(fd))} is using this workdir "
            f"({path}); wait for it to finish, or give this run another "
            f"--workdir") from None
      if e.errno not in _UNSUPPORTED:
        raise
      _claim_without_record_locks(fd, workdir, path)
    _write_owner(fd)
    yield
    os.ftruncate(fd, 0)  # Ended: nobody to name any more.
  finally:
    os.close(fd)  # Releases the lock.


def _claim_without_record_locks(fd, workdir, path) -> None:
  """The lock file alone as the lock, where flock is not supported."""
  owner = _read_owner(fd)
  if owner.get("pid") and owner.get("pid") != os.getpid() and _alive_here(
      owner):
    raise WorkdirBusyError(
        f"{workdir}: {_describe(owner)} holds {path} (this filesystem has "
        f"no record locks, so it cannot be checked from here); if that run "
        f"has ended, remove {path} and run again")
